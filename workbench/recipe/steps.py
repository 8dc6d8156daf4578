"""The steps every recipe runs, in order: strategy, weights, plan, model and policy, training, report."""
from __future__ import annotations

import time
from dataclasses import replace

from workbench.recipe.outputs import record_plan, save_outputs
from workbench.recipe.params import RecipeParams, parse_unfreeze
from workbench.recipe.weights import build_model, fetch_or_fallback, prepare_weights
from workbench.train.distribute import make_strategy
from workbench.train.finetune import finetune
from workbench.train.policy import training_policy
from workbench.train.precision import resolve_precision


class Run:
    """One recipe run from its checked parameters; each method is a notebook cell's step and says what it did.

    Made in the parameter-checking cell: the tf.distribute strategy comes first (a cluster needs it before
    any TensorFlow work). The planner costs the machine in the precision "auto" resolves to before any model
    exists; `finetune` decides "auto" for the model it trains (`workbench.train.precision`). The run's wall
    time (metrics.json's `wall_seconds`) counts from here to the report.
    """

    def __init__(self, p: RecipeParams, default_size: int):
        self.started = time.perf_counter()
        self.p, self.default_size = p, default_size
        self.strategy = make_strategy(p.strategy)
        self.plan_precision = resolve_precision(p.precision)
        self.image_size = default_size if p.image_size == "auto" else p.image_size
        self.weights_file = self.plan = self.noisy = None
        self.pretrained = False
        self.pictures = []  # the report's pictures, once written

    def prepare_weights(self) -> int:
        """The weights fetched once and the image size (their native one with image_size="auto", when
        affordable); with budget_minutes the plan picks both later. Returns the image size."""
        if not self.p.budget_minutes:
            self.weights_file, self.image_size = prepare_weights(self.p.variant, self.p.weights, self.p.image_size,
                                                                 self.default_size)
        return self.image_size

    def plan_within_budget(self, data, reload):
        """With budget_minutes, `wb.plan` picks the variant, its weights, the image size and the epochs;
        the chosen weights are fetched (planning again from random initialization when they cannot be
        had), and the data reloaded at the plan's size by `reload(image_size, batch_size)`. Returns the data."""
        if not self.p.budget_minutes:
            return data
        from workbench.plan.planner import plan as make_plan
        minutes, tag = self.p.budget_minutes, self.p.weights.spec
        chosen = make_plan(data, minutes, weights=tag, precision=self.plan_precision)
        if chosen.weights is not None:
            self.weights_file = fetch_or_fallback(chosen.variant, chosen.weights)
            if self.weights_file is None:
                print("Planning again for random initialization, within the same budget:")
                chosen = make_plan(data, minutes, weights=None, precision=self.plan_precision, started=chosen.started)
        self.p = replace(self.p, variant=chosen.variant, epochs=chosen.epochs,
                         unfreeze=parse_unfreeze(chosen.unfreeze))
        self.plan, self.image_size = chosen, chosen.image_size
        if (chosen.image_size, chosen.batch_size) != (data.image_size, data.batch_size):
            data = reload(chosen.image_size, chosen.batch_size)
        chosen.lap("setup")
        return data

    def build(self, num_classes: int, multi_label: bool = False):
        """(model, policy): the model with the fetched weights and a fresh head (sigmoid for multi-label
        data, else softmax); the training policy
        resolved once for it (every "auto" decided: see `wb.training_policy`)."""
        p = self.p
        model, self.pretrained = build_model(p.variant, self.weights_file, num_classes, self.image_size,
                                             seed=p.seed, drop_path=p.drop_path, multi_label=multi_label)
        policy = training_policy(p.unfreeze, p.epochs, self.pretrained, p.lr_decay, augment=p.augment, ema=p.ema,
                                 tta=p.tta, progressive=p.progressive)
        print("Policy:", policy)
        if self.plan:
            self.plan.lap("build")
        return model, policy

    def train(self, model, data, policy):
        """`wb.finetune` under `policy`, or with unlabeled_dir noisy-student training (the model is the
        teacher). Returns the fine-tuning result of the model kept."""
        kwargs = dict(lr=self.p.lr, seed=self.p.seed, precision=self.p.precision, strategy=self.strategy,
                      callbacks=[self.plan.guard()] if self.plan else None, policy=policy)
        if self.p.unlabeled_dir:
            self.noisy = self._noisy_student(model, data, **kwargs)
            print(self.noisy.summary())
            result = self.noisy.finetune
        else:
            result = finetune(model, data, epochs=self.p.epochs, output_dir=self.p.output_dir, **kwargs)
        if self.plan:
            self.plan.lap("training")
        return result

    def _noisy_student(self, model, data, **finetune_kwargs):
        """`model` (fresh) is the teacher; students are `student_variant` with the same weights, built fresh
        each round with their noise. `unlabeled_dir="sample"`: the sample's unlabelled photos, whose true
        classes are then reported."""
        from workbench.data.sample import sample_truth, sample_unlabeled
        from workbench.train.noisy_student import noisy_student
        p, folder, truth = self.p, self.p.unlabeled_dir, None
        if folder == "sample":
            folder = sample_unlabeled()
            truth = sample_truth(folder)
        weights = (self.weights_file if p.student_variant == p.variant
                   else fetch_or_fallback(p.student_variant, p.student_weights))

        def student(dropout=0.0, drop_path_rate=0.0):
            return build_model(p.student_variant, weights, data.num_classes, self.image_size, dropout=dropout,
                               seed=p.seed, drop_path=drop_path_rate)[0]

        return noisy_student(data, folder, lambda: model, student, rounds=p.student_rounds, epochs=p.epochs,
                             truth=truth, teacher_tta=p.tta, output_dir=p.output_dir / "noisy_student",
                             **finetune_kwargs)

    def report(self, result, data, policy) -> dict:
        """metrics.json, model.keras, the pictures and the exports asked for (with a plan: its seconds)."""
        p = self.p
        extra = {"pretrained": self.pretrained, "seed": p.seed, "unfreeze": str(policy.unfreeze),
                 "lr_decay": policy.lr_decay, "policy": policy.as_dict(), "drop_path": p.drop_path,
                 "weights": p.weights.spec, "image_size": self.image_size,
                 "wall_seconds": round(time.perf_counter() - self.started, 1)}
        if self.noisy:
            extra["noisy_student"] = self.noisy.metrics()
        metrics = save_outputs(result, data, p.output_dir, p.variant, p.export, extra=extra)
        self.pictures = sorted((f for f in metrics["files"] if f.endswith(".png") and f != "lr_schedule.png"),
                               key=lambda f: f != "training_curves.png")
        if self.plan:
            metrics = record_plan(metrics, self.plan, result)
        if self.noisy:
            self.noisy.plot(p.output_dir / "noisy_student.png")
            self.pictures.append("noisy_student.png")
        return metrics
