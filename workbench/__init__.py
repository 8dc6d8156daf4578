"""RegNet fine-tuning workbench for TensorFlow 2 / Keras 3."""
from workbench.utils.runtime import import_tensorflow_quietly, seed_everything

import_tensorflow_quietly()

from workbench.data.tfds import load_tfds  # noqa: E402
from workbench.models.contract import STAGES, feature_extractor, outputs_logits, stage_layers  # noqa: E402
from workbench.data.pipeline import DatasetUnavailableError, ImageData, cache_root  # noqa: E402
from workbench.train.distribute import make_strategy  # noqa: E402
from workbench.models.design import VARIANTS, RegNetConfig, RegNetZConfig, complexity, resolve_variant  # noqa: E402
from workbench.deploy.export import export, export_all  # noqa: E402
from workbench.deploy.predict import Predictions, predict  # noqa: E402
from workbench.train.finetune import finetune  # noqa: E402
from workbench.train.result import FinetuneResult  # noqa: E402
from workbench.data.folders import load_folder  # noqa: E402
from workbench.data.csv import load_csv  # noqa: E402
from workbench.models.tfhub import HubBackbone, HubModelUnavailableError, hub_backbone, hub_classifier  # noqa: E402
from workbench.train.lr_find import LRFindResult, lr_find, suggest_lr  # noqa: E402
from workbench.models.regnet import regnet  # noqa: E402
from workbench.train.discriminative import DiscriminativeOptimizer  # noqa: E402
from workbench.plan.planner import Plan, plan  # noqa: E402
from workbench.report.data_plots import plot_class_distribution, show_batch  # noqa: E402
from workbench.report.gradcam import GradCAMUnavailableError, explain, overlay_heatmap  # noqa: E402
from workbench.report.runs import compare_runs, plot_runs  # noqa: E402
from workbench.train.policy import TrainingPolicy, training_policy  # noqa: E402
from workbench.models.published import WeightsUnavailableError, list_weights  # noqa: E402
from workbench.report.reports import (confusion_matrix, per_class_metrics, plot_confusion_matrix,  # noqa: E402
                               plot_lr_schedule, plot_top_losses, plot_training_curves,
                               predict_dataset, write_report)
from workbench.train.noisy_student import NoisyStudentResult, noisy_student  # noqa: E402
from workbench.data.sample import sample_dataset, sample_unlabeled  # noqa: E402
from workbench.train.lr_schedules import OneCycle, WarmupCosine  # noqa: E402
from workbench.train.schedule import Schedule, default_schedule, parse_schedule  # noqa: E402
from workbench.train.unfreeze import GradualUnfreezing, UnfreezePolicy, unfreeze_policy  # noqa: E402

__all__ = [
    "VARIANTS", "STAGES", "RegNetConfig", "RegNetZConfig", "complexity", "regnet", "resolve_variant", "stage_layers",
    "feature_extractor", "outputs_logits", "list_weights", "WeightsUnavailableError",
    "DatasetUnavailableError", "ImageData", "cache_root", "load_folder", "load_csv", "load_tfds",
    "sample_dataset", "sample_unlabeled", "noisy_student", "NoisyStudentResult", "show_batch",
    "plot_class_distribution",
    "GradualUnfreezing", "Schedule", "parse_schedule", "default_schedule", "unfreeze_policy", "UnfreezePolicy",
    "DiscriminativeOptimizer", "finetune", "plan", "Plan", "training_policy", "TrainingPolicy", "FinetuneResult", "seed_everything",
    "make_strategy",
    "WarmupCosine", "OneCycle", "lr_find", "LRFindResult", "suggest_lr",
    "export", "export_all", "predict", "Predictions", "HubBackbone", "HubModelUnavailableError", "hub_backbone",
    "hub_classifier",
    "confusion_matrix", "per_class_metrics", "plot_confusion_matrix", "plot_lr_schedule",
    "plot_top_losses", "plot_training_curves", "predict_dataset", "write_report",
    "explain", "overlay_heatmap", "GradCAMUnavailableError", "compare_runs", "plot_runs",
]
