"""What the recipe notebooks call: parameter checks, weights and model, the run's steps, outputs, summary.

Recipes (`recipes/*.ipynb`) keep narrative and parameters; the logic that would make a cell longer than a
dozen lines lives here: `params` (every parameter checked once into values), `weights` (one fetch, the
image size, the model), `steps` (`Run`: the steps every recipe takes, in order), `outputs` (what lands in
output_dir).
"""
from workbench.recipe.outputs import record_plan, save_outputs, summary
from workbench.recipe.params import RecipeError, RecipeParams, Weights, check_params
from workbench.recipe.steps import Run
from workbench.recipe.weights import TRAIN_BUDGET_GF, build_model, native_image_size, prepare_weights

__all__ = ["RecipeError", "RecipeParams", "Run", "TRAIN_BUDGET_GF", "Weights", "build_model", "check_params",
           "native_image_size", "prepare_weights", "record_plan", "save_outputs", "summary"]
