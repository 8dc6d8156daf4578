"""Noisy-student fine-tuning: unlabelled images become training data (Xie et al., 2020).

"Self-training with Noisy Student improves ImageNet classification", adapted to fine-tuning a
pretrained model on few labels:

1. a teacher is fine-tuned on the labelled images under the workbench's policy (`wb.finetune`);
2. it labels the unlabelled images: the top class (`labels="hard"`) or class probabilities
   (`"soft"`), averaged over test-time views with `teacher_tta`. Images whose top probability is below
   `threshold` are dropped, and the classes are balanced as the paper does
   (`workbench.train.pseudo_labels`);
3. a student, built fresh from the same pretrained weights (equal or larger: a smaller one is allowed
   with a warning), trains on labelled plus pseudo-labelled images with noise: random-resized crops,
   dropout before the classifier and stochastic depth (`drop_path=0.2`);
4. the student becomes the teacher, for `rounds` rounds.

Every round's validation accuracy is reported beside the teacher-only baseline, with the pseudo-labels
kept per class and their accuracy on held-out labelled images (and on the unlabelled images' true
classes when `truth` is known). The returned model is the best round's by validation accuracy (the
teacher when no student beats it, which is then said plainly).

The defaults (hard labels, crop noise with dropout 0.5 and stochastic depth 0.2, threshold 0.5, one
round) were chosen with `python -m workbench.bench.noisy_student --seeds 0,1,2`: the table and the
reasons are in docs/noisy-student.md. It pays off with few labels and many unlabelled images; with
about as many unlabelled images as labelled ones it lost (-0.025), so such a run warns.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np

from workbench.data import augment as augmentation
from workbench.utils import checks
from workbench.utils.say import Say
from workbench.train.finetune import finetune
from workbench.train.result import FinetuneResult
from workbench.data.folders import scan_unlabeled, unlabeled_batches, with_extra_images
from workbench.data.pipeline import class_indices
from workbench.train.pseudo_labels import Predictor, select

LABELS = ("soft", "hard")
LABEL_DEFAULT = "hard"   # these three are the benchmark's choices (docs/noisy-student.md)
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
    finetune_kwargs: passed to every `wb.finetune` (lr, unfreeze, pretrained, policy, ...);
        `augment` (or a policy's) applies to the teacher only (students get `noise`).
    """
    checks.positive_int("rounds", rounds)
    checks.positive_int("epochs", epochs)
    labels = checks.one_of("labels", labels, LABELS)
    checks.fraction("threshold", threshold, " (the least top-class probability a pseudo-label needs)")
    checks.fraction("dropout", dropout)
    checks.fraction("drop_path", drop_path)
    noise = augmentation.parse(noise, "none")
    if getattr(data, "multi_label", False):
        raise ValueError("noisy_student pseudo-labels each unlabelled image with one class (its top class); "
                         "multi-label data has label sets: train it with wb.finetune, without unlabelled images.")
    if getattr(data, "files", None) is None:
        raise ValueError("noisy_student needs labelled data from wb.load_folder: the student's training set "
                         "is its image files plus the pseudo-labelled ones.")
    if student is None and isinstance(teacher, keras.Model):
        raise ValueError("teacher is a fine-tuned model, so student= must build the student "
                         "(a callable accepting dropout= and drop_path_rate=).")
    student = student or teacher
    say = Say(verbose)
    files, feed, skipped = scan_unlabeled(unlabeled_dir, data.image_size)
    if skipped:
        say(f"Skipped {len(skipped)} unreadable unlabelled file(s): "
            + "; ".join(f"{p}: {why}" for p, why in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    root = Path(unlabeled_dir).expanduser()
    known = _truth_indices(truth or {}, files, root, data.class_names)
    run = _Rounds(data, epochs, seed, verbose, output_dir, finetune_kwargs, say)

    policy = finetune_kwargs.get("policy")
    run.train(0, "teacher", teacher, policy.augment if policy is not None else finetune_kwargs.get("augment"))
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
        self.predict = Predictor()
        self.val_labels = class_indices(np.concatenate([np.asarray(y) for _, y in data.val]))
        self.teacher_params = None

    def with_augment(self, augment) -> dict:
        """The finetune arguments with `augment` (a resolved policy given gets it in its place)."""
        policy = self.kwargs.get("policy")
        if policy is None:
            return {**self.kwargs, "augment": augment}
        return {**self.kwargs, "policy": replace(policy, augment=augmentation.parse(augment, "none"))}

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
            kwargs = self.kwargs if augment is None else self.with_augment(augment)
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
