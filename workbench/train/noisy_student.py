"""Noisy-student fine-tuning: unlabelled images become training data (Xie et al., 2020).

"Self-training with Noisy Student improves ImageNet classification", adapted
to fine-tuning a pretrained model on few labels:

1. a teacher is fine-tuned on the labelled images with the workbench's
   normal policy (`wb.finetune`);
2. it labels the unlabelled images: class probabilities (`labels="soft"`) or
   the top class (`"hard"`), averaged over test-time views with `teacher_tta`.
   Images whose top probability is below `threshold` are dropped, and the
   classes are balanced as the paper does: a class with more than the mean
   count keeps its most confident images, a class with fewer repeats its own;
3. a student, built fresh from the same pretrained weights (equal or larger:
   a smaller one is allowed with a warning), trains on labelled plus
   pseudo-labelled images with noise: augmentation (`noise`: random-resized
   crops; RandAugment as in the paper is one word away), dropout before the
   classifier and stochastic depth (the paper's 0.5 and 0.8 survival of the
   last block, i.e. `drop_path=0.2`);
4. the student becomes the teacher, for `rounds` rounds.

While a model's backbone stays frozen (a head-only schedule), its features
of the unlabelled and validation images are computed once and reused by every
later pseudo-label pass whose backbone weights are the same.

Every round's validation accuracy is reported beside the teacher-only
baseline on the same validation set, with the pseudo-labels kept per class,
their accuracy on held-out labelled images (the validation images the
teacher is confident about), and, when the true labels of the unlabelled
images are known (`truth`, in tests and benchmarks), their real accuracy. The
returned model is the best round's by validation accuracy (the teacher when
no student beats it, which is then said plainly).

The defaults were chosen with `python -m workbench.bench.noisy_student
--seeds 0,1,2` (a 0.4 M-parameter RegNetY pretrained on a source task,
fine-tuned at 32 px for 12 epochs; scikit-learn's digits 5-9 and scikit-image's
brick/grass/gravel textures with 10 or 50 labels per class, the rest of the
training pool unlabelled). Validation accuracy, mean of 3 seeds:

    task (labelled/unlab.)  teacher  hard  hard r2  soft   soft,thr 0  soft,RandAug  soft,no noise
    digits@10   (50/596)    0.755    0.855  0.888   0.837  0.825       0.715         0.836
    digits@50   (250/396)   0.921    0.943  0.935   0.923  0.945       0.716         0.945
    textures@10 (30/270)    0.644    0.800  0.803   0.797  0.794       0.508         0.711
    textures@50 (150/150)   0.833    0.808  0.772   0.783  0.786       0.683         0.792
    mean                    0.788    0.851  0.849   0.835  0.838       0.656         0.821

- `labels="hard"` (LABEL_DEFAULT): hard pseudo-labels beat soft ones on all
  four tasks (mean +0.016).
- `NOISE = "crop"` with dropout 0.5 and stochastic depth 0.2: noise is what
  lets the student beat the teacher (+0.014 on average over no noise, +0.09
  on textures@10); RandAugment, the paper's noise, hurt every task at 32 px in
  12 epochs (as `strong` augmentation does in the transfer benchmark).
- `THRESHOLD = 0.5`: even with no threshold (0.838 against 0.835, soft labels);
  it raises the pseudo-labels' accuracy (digits@10 0.85 against 0.77).
- One round (`rounds=1`): a second one gained on digits@10 (+0.03), lost
  on the 50-label tasks.
- It pays off with few labels and many unlabelled images (+0.10 and +0.16
  with 10 labels per class) and lost on textures@50, with as many unlabelled
  images as labelled ones (150 each; -0.025): a run in that regime warns.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from workbench.data import augment as augmentation
from workbench.utils import checks
from workbench.models.contract import feature_extractor, head_model, probabilities
from workbench.train.finetune import FinetuneResult, finetune
from workbench.data.folders import scan_unlabeled, unlabeled_batches, with_extra_images
from workbench.data.pipeline import class_indices
from workbench.train.tta import views

LABELS = ("soft", "hard")
LABEL_DEFAULT = "hard"   # the choices below are the benchmark's (module docstring)
THRESHOLD = 0.5
NOISE = "crop"
DROPOUT = 0.5
DROP_PATH = 0.2


@dataclass
class NoisyStudentResult:
    """Each round's model quality and pseudo-labels; the best round's model and fine-tuning result."""

    model: keras.Model
    finetune: FinetuneResult | None  # None when the best round is a teacher given already fine-tuned
    best_round: int
    rounds: list[dict]
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def baseline(self) -> float:
        """The teacher-only validation accuracy (round 0)."""
        return self.rounds[0]["val_accuracy"]

    def metrics(self) -> dict:
        """What metrics.json records under "noisy_student"."""
        return {"baseline_val_accuracy": self.baseline, "best_round": self.best_round,
                "best_val_accuracy": self.rounds[self.best_round]["val_accuracy"], "rounds": self.rounds,
                "warnings": self.warnings, "unlabeled_skipped": len(self.skipped)}

    def summary(self) -> str:
        """One line per round: role, validation accuracy, pseudo-labels kept and their accuracy, minutes."""
        lines = [f"{'round':<6}{'model':<9}{'val_acc':>8}{'kept':>7}{'held-out':>9}{'true acc':>9}{'min':>6}"]
        for r in self.rounds:
            p = r.get("pseudo_labels") or {}
            true = p.get("accuracy")
            lines.append(f"{r['round']:<6}{r['role']:<9}{r['val_accuracy']:>8.3f}"
                         f"{sum(p.get('kept_per_class', {}).values()) if p else '-':>7}"
                         f"{p['held_out_accuracy'] if p.get('held_out_accuracy') is not None else float('nan'):>9.3f}"
                         f"{true if true is not None else float('nan'):>9.3f}{r['minutes']:>6.1f}")
        lines.append(f"Teacher-only baseline {self.baseline:.3f}; returned: round {self.best_round} "
                     f"({self.rounds[self.best_round]['val_accuracy']:.3f}).")
        return "\n".join(lines + self.warnings)

    def plot(self, path=None):
        """Validation accuracy per round against the baseline, and the pseudo-labels kept per class."""
        from workbench.utils.figures import finish, plt
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        x = [r["round"] for r in self.rounds]
        left.plot(x, [r["val_accuracy"] for r in self.rounds], "o-", label="val accuracy")
        left.axhline(self.baseline, color="grey", ls="--", label=f"teacher only ({self.baseline:.3f})")
        known = [(r["round"], r["pseudo_labels"]["accuracy"]) for r in self.rounds
                 if (r.get("pseudo_labels") or {}).get("accuracy") is not None]
        if known:
            left.plot(*zip(*known), "s:", label="true accuracy of the pseudo-labels it trained on")
        left.set_xticks(x, ["teacher" if k == 0 else f"student {k}" for k in x])
        left.set_ylabel("accuracy")
        left.set_ylim(0, 1.02)
        left.legend(fontsize=8, loc="lower right")
        left.set_title("Noisy student: accuracy per round")
        students = [r for r in self.rounds if r.get("pseudo_labels")]
        if students:
            names = list(students[0]["pseudo_labels"]["kept_per_class"])
            width = 0.8 / len(students)
            for i, r in enumerate(students):
                counts = [r["pseudo_labels"]["kept_per_class"][c] for c in names]
                right.bar(np.arange(len(names)) + i * width, counts, width, label=f"round {r['round']}")
            right.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30 if len(names) > 5 else 0)
            right.legend(fontsize=8)
        right.set_ylabel("pseudo-labelled images kept")
        right.set_title("Pseudo-labels per class (after balancing)")
        plt.close(finish(fig, path))
        return fig


def select(probs: np.ndarray, threshold: float, balance: bool) -> np.ndarray:
    """Indices of the pseudo-labelled images to train on (with repeats when balancing).

    Images whose top probability is below `threshold` are dropped; with
    `balance`, every class that kept any is brought to the mean count over
    those classes: its most confident images when it has more, its own images
    repeated when it has fewer (the paper's duplicate-or-trim).
    """
    confidence, top = probs.max(-1), probs.argmax(-1)
    per_class = [np.flatnonzero((top == c) & (confidence >= threshold)) for c in range(probs.shape[1])]
    per_class = [idx[np.argsort(-confidence[idx], kind="stable")] for idx in per_class]
    if not balance:
        return np.sort(np.concatenate(per_class)).astype(np.int64)
    present = [len(idx) for idx in per_class if len(idx)]
    if not present:
        return np.zeros(0, np.int64)
    target = int(round(np.mean(present)))
    return np.concatenate([np.resize(idx, target) for idx in per_class if len(idx)]).astype(np.int64)


class _Predictor:
    """Class probabilities of a model on a dataset (averaged over test-time views), reusing the backbone
    features of earlier passes whose backbone weights were the same."""

    def __init__(self):
        self.features: dict[tuple, np.ndarray] = {}
        self._parts: dict[int, tuple] = {}

    def _split(self, model):
        """(model, backbone, head or None, fingerprint of the backbone weights), made once per model."""
        if id(model) not in self._parts:
            backbone, head = feature_extractor(model), head_model(model)
            digest = hashlib.sha1()
            for w in backbone.weights:
                digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
            self._parts[id(model)] = (model, backbone, head, digest.hexdigest())
        return self._parts[id(model)][1:]

    @staticmethod
    def _outputs(net, dataset, tta: bool, flip: bool) -> np.ndarray:
        """(views, images, ...) outputs of `net`; a short last batch is padded, so one trace serves all."""
        outputs, size = [], None
        for x, _ in dataset:
            n = int(x.shape[0])
            size = size or n
            per_view = []
            for v in (views(x, flip) if tta else [x]):
                padded = tf.pad(v, [[0, size - n], [0, 0], [0, 0], [0, 0]]) if n < size else v
                per_view.append(net.predict_on_batch(padded)[:n])
            outputs.append(np.stack(per_view))
        return np.concatenate(outputs, axis=1)

    def __call__(self, model, dataset: tf.data.Dataset, name: str, tta: bool, flip: bool) -> np.ndarray:
        backbone, head, fingerprint = self._split(model)
        if head is None:
            out = self._outputs(model, dataset, tta, flip)
            return np.mean([keras.ops.convert_to_numpy(probabilities(model, o)) for o in out], axis=0)
        key = (fingerprint, name, tta, flip)
        if key not in self.features:
            self.features[key] = self._outputs(backbone, dataset, tta, flip)
        return np.mean([keras.ops.convert_to_numpy(probabilities(model, head(f, training=False)))
                        for f in self.features[key]], axis=0)


def noisy_student(data, unlabeled_dir, teacher, student=None, *, rounds: int = 1, epochs: int = 10,
                  labels: str = LABEL_DEFAULT, threshold: float = THRESHOLD, balance: bool = True, noise=NOISE,
                  dropout: float = DROPOUT, drop_path: float = DROP_PATH, teacher_tta: bool = False, truth=None,
                  output_dir=None, seed: int = 0, verbose="auto", **finetune_kwargs) -> NoisyStudentResult:
    """Fine-tune a teacher on `data`, then `rounds` noisy students on `data` plus pseudo-labelled images.

    data: labelled images from `wb.load_folder`.
    unlabeled_dir: a folder of images (no class sub-folders needed), checked as
        `load_folder` checks its files: unreadable ones are listed and skipped;
        when none is readable the run is ordinary fine-tuning, said plainly.
    teacher, student: callables building a fresh model (with pretrained weights)
        for the classes of `data`; `student(dropout=..., drop_path_rate=...)`
        must accept the noise (e.g. `functools.partial(wb.regnet, "600mf",
        num_classes=5, weights=path, input_shape=(128, 128, 3))`). `student`
        defaults to `teacher`. `teacher` may also be a model fine-tuned
        already (round 0 then only evaluates it; `student` is then needed).
    labels, threshold, balance: pseudo-labels as class probabilities ("soft")
        or the top class ("hard"); drop images below `threshold` top
        probability; balance the classes (see `select`).
    noise, dropout, drop_path: the student's augmentation spec, dropout before
        the classifier, stochastic depth of the last block.
    teacher_tta: the teacher's predictions averaged over test-time views (`workbench.train.tta`).
    truth: {file path relative to unlabeled_dir: class name} of unlabelled
        images whose labels are known (benchmarks, tests): their pseudo-label
        accuracy is reported; true labels are only compared with, never trained on.
    output_dir: round k checkpoints in output_dir/round<k> (rerun to resume).
    finetune_kwargs: passed to every `wb.finetune` (lr, unfreeze, pretrained, ...);
        `augment` applies to the teacher only (students get `noise`).
    """
    checks.positive_int("rounds", rounds)
    checks.positive_int("epochs", epochs)
    labels = checks.one_of("labels", labels, LABELS)
    checks.fraction("threshold", threshold, " (the least top-class probability a pseudo-label needs)")
    checks.fraction("dropout", dropout)
    checks.fraction("drop_path", drop_path)
    noise = augmentation.parse(noise, "none")
    if getattr(data, "files", None) is None:
        raise ValueError("noisy_student needs labelled data from wb.load_folder: the student's training set "
                         "is its image files plus the pseudo-labelled ones.")
    if student is None and isinstance(teacher, keras.Model):
        raise ValueError("teacher is a fine-tuned model, so student= must build the student "
                         "(a callable accepting dropout= and drop_path_rate=).")
    student = student or teacher
    say = print if verbose else (lambda *_: None)
    files, feed, skipped = scan_unlabeled(unlabeled_dir, data.image_size)
    if skipped:
        say(f"Skipped {len(skipped)} unreadable unlabelled file(s): "
            + "; ".join(f"{p}: {why}" for p, why in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    root = Path(unlabeled_dir).expanduser()
    known = _truth_indices(truth or {}, files, root, data.class_names)
    run = _Rounds(data, epochs, seed, verbose, output_dir, finetune_kwargs, say)

    run.train(0, "teacher", teacher, finetune_kwargs.get("augment"))
    if not files:
        run.warn(f"All {len(skipped)} unlabelled images in '{root}' are unreadable: no pseudo-labels, so this "
                 "was ordinary fine-tuning (the teacher alone).")
    elif len(files) <= data.num_train:
        run.warn(f"Only {len(files)} unlabelled images for {data.num_train} labelled ones: the student sees "
                 "little new data. In the benchmark, noisy student lost to the teacher with as many unlabelled "
                 "images as labelled (textures, 50 per class) and paid off with more.")
    batches = unlabeled_batches(feed, data.image_size, data.batch_size) if files else None
    for k in range(1, rounds + 1 if files else 1):
        previous = run.rounds[-1]
        probs = run.predict(run.models[-1], batches, "unlabeled", teacher_tta, previous["flip"])
        kept = select(probs, threshold, balance)
        report = run.pseudo_report(previous, probs, kept, threshold, labels, known)
        if not len(kept):
            run.warn(f"Round {k}: no unlabelled image reached the threshold {threshold}: stopping. Lower "
                     "threshold= or train a better teacher.")
            break
        rows = probs[kept] if labels == "soft" else np.eye(data.num_classes, dtype=np.float32)[probs[kept].argmax(-1)]
        extended = with_extra_images(data, [feed[i] for i in kept], rows, augment=noise)
        say(f"Round {k}: {len(np.unique(kept))} of {len(files)} unlabelled images kept (threshold {threshold}, "
            f"{labels} labels), {len(kept)} after balancing; the student trains on {extended.num_train} images.")
        run.train(k, "student", lambda: student(dropout=dropout, drop_path_rate=drop_path), noise,
                  data=extended, pseudo=report)
    return run.result(skipped)


def _truth_indices(truth: dict, files: list[str], root: Path, class_names) -> dict[int, int]:
    """{index into files: class index} of the unlabelled files whose class is known."""
    where = {Path(f).relative_to(root).as_posix(): i for i, f in enumerate(files)}
    out = {}
    for rel, name in truth.items():
        if name not in class_names:
            raise ValueError(f"truth[{rel!r}] = {name!r} is not one of the classes {list(class_names)}.")
        if rel in where:
            out[where[rel]] = list(class_names).index(name)
    return out


class _Rounds:
    """The rounds of one noisy-student run: train, evaluate, pseudo-label, report."""

    def __init__(self, data, epochs, seed, verbose, output_dir, finetune_kwargs, say):
        self.data, self.epochs, self.seed, self.verbose, self.say = data, epochs, seed, verbose, say
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.kwargs = {k: v for k, v in finetune_kwargs.items() if k != "augment"}
        self.rounds, self.results, self.models, self.warnings = [], [], [], []
        self.predict = _Predictor()
        self.val_labels = class_indices(np.concatenate([np.asarray(y) for _, y in data.val]))
        self.teacher_params = None

    def warn(self, message: str):
        self.warnings.append(message)
        self.say("WARNING: " + message)

    def train(self, k, role, build, augment, data=None, pseudo=None):
        model = build if isinstance(build, keras.Model) else build()
        params = model.count_params()
        if role == "teacher":
            self.teacher_params = params
        elif params < self.teacher_params:
            self.warn(f"The student ({model.name}, {params:,} parameters) is smaller than the teacher "
                      f"({self.teacher_params:,}); the paper's students are equal or larger.")
        start = time.perf_counter()
        if build is model:  # a teacher fine-tuned already
            self.say(f"Round {k}: the given {role} ({model.name}, {params:,} parameters), already fine-tuned.")
            result = None
        else:
            self.say(f"Round {k}: fine-tuning the {role} ({model.name}, {params:,} parameters).")
            kwargs = self.kwargs if augment is None else {**self.kwargs, "augment": augment}
            result = finetune(model, data or self.data, self.epochs, seed=self.seed, verbose=self.verbose,
                              output_dir=self.output_dir / f"round{k}" if self.output_dir else None, **kwargs)
            model = result.model
        minutes = (time.perf_counter() - start) / 60
        ops = augmentation.parse(augment, "none").ops if augment is not None else getattr(self.data.augment, "ops", ())
        val_probs = self.predict(model, self.data.val, "val", False, False)
        record = {"round": k, "role": role, "model": model.name, "params": params,
                  "val_accuracy": float(np.mean(val_probs.argmax(-1) == self.val_labels)),
                  "minutes": round(minutes, 3), "epochs_run": result.epochs_run if result else 0,
                  "train_images": (data or self.data).num_train, "flip": "flip" in ops, "val_probs": val_probs}
        if result is not None and result.evaluation:
            record["tta_val_accuracy"] = result.evaluation["tta_val_accuracy"]
        if pseudo is not None:
            record["pseudo_labels"] = pseudo
            base = self.rounds[0]["val_accuracy"]
            if record["val_accuracy"] < base:
                self.warn(f"Round {k}'s student ({record['val_accuracy']:.3f}) is below the teacher-only baseline "
                          f"({base:.3f}) on the validation set: here noisy student does not help.")
        self.say(f"Round {k}: {role} val_accuracy {record['val_accuracy']:.4f} ({minutes:.1f} min).")
        self.rounds.append(record)
        self.results.append(result)
        self.models.append(model)

    def pseudo_report(self, teacher, probs, kept, threshold, labels, known) -> dict:
        """What the pseudo-labels of `teacher` (a round record) are worth, on held-out and known images."""
        val_probs = teacher["val_probs"]
        confident = val_probs.max(-1) >= threshold
        held_out = (float(np.mean(val_probs.argmax(-1)[confident] == self.val_labels[confident]))
                    if confident.any() else None)
        names = self.data.class_names
        counts = np.bincount(probs[kept].argmax(-1), minlength=len(names)) if len(kept) else np.zeros(len(names), int)
        unique = np.unique(kept)
        report = {"labels": labels, "threshold": threshold, "unlabeled": int(len(probs)),
                  "confident": int(np.sum(probs.max(-1) >= threshold)), "unique_kept": int(len(unique)),
                  "kept_per_class": {c: int(n) for c, n in zip(names, counts)},
                  "held_out_accuracy": held_out, "held_out_coverage": float(np.mean(confident)),
                  "accuracy": None, "accuracy_all": None, "known": len(known)}
        if known:
            idx = np.fromiter(known, np.int64)
            truth = np.fromiter(known.values(), np.int64)
            report["accuracy_all"] = float(np.mean(probs[idx].argmax(-1) == truth))
            seen = np.isin(idx, unique)
            if seen.any():
                report["accuracy"] = float(np.mean(probs[idx[seen]].argmax(-1) == truth[seen]))
        if held_out is not None and held_out < teacher["val_accuracy"]:
            self.warn(f"The teacher's confident predictions (top probability >= {threshold}) are right on "
                      f"{held_out:.3f} of the held-out validation images, below its overall "
                      f"{teacher['val_accuracy']:.3f}: "
                      "its confidence does not pick out better pseudo-labels here; expect little from the student.")
        missing = [c for c, n in report["kept_per_class"].items() if n == 0]
        if missing and len(kept):
            self.warn(f"No pseudo-label for class(es) {missing}: the student learns them from labelled images only.")
        return report

    def result(self, skipped) -> NoisyStudentResult:
        best = max(range(len(self.rounds)), key=lambda i: (self.rounds[i]["val_accuracy"], -i))
        if best == 0 and len(self.rounds) > 1:
            self.say("No student beat the teacher on the validation set: the returned model is the teacher's.")
        rounds = [{k: v for k, v in r.items() if k not in ("val_probs", "flip")} for r in self.rounds]
        return NoisyStudentResult(self.models[best], self.results[best], best, rounds, self.warnings, skipped)
