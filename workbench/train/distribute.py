"""tf.distribute for fine-tuning: one strategy name for one machine, several GPUs, several machines or a TPU.

    strategy = wb.make_strategy("auto")   # before loading data: see below

- "default": no distribution (one device).
- "mirrored": `MirroredStrategy`, every local GPU (synchronous data parallelism).
- "multiworker": `MultiWorkerMirroredStrategy` across the machines that
  `TF_CONFIG` lists; every worker runs the same recipe, the chief (worker 0)
  writes checkpoints and outputs, and a restarted cluster resumes from the
  chief's last checkpoint.
- "tpu": `TPUStrategy` on the TPU that `TPUClusterResolver` finds (a TPU VM,
  Colab, or `TPU_NAME`).
- "auto": multiworker when `TF_CONFIG` names more than one task, else a TPU
  when one is found, else mirrored with more than one GPU, else default.

TensorFlow fixes collective communication when the runtime starts, so a
multi-worker or TPU strategy must be made before any TensorFlow work (loading
data included): make it first (the recipes do, in their parameter cell) and
pass the object to `finetune(strategy=...)`.
"""
from __future__ import annotations

import contextlib
import json
import os

import tensorflow as tf

from workbench.utils import checks

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")


def _cluster() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except ValueError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}): expected e.g. "
                         '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}}.') from None


def _tasks() -> int:
    return sum(len(v) for v in _cluster().get("cluster", {}).values())


def _tpu_resolver():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        resolver.cluster_spec()
        return resolver
    except (ValueError, RuntimeError, KeyError):
        return None


def make_strategy(strategy="auto") -> tf.distribute.Strategy:
    """A `tf.distribute.Strategy` from a name of STRATEGIES (a Strategy object is returned as is)."""
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    checks.one_of("strategy", strategy, STRATEGIES)
    if strategy == "auto":  # a cluster first: listing devices would start the runtime too early for it
        strategy = ("multiworker" if _tasks() > 1 else "tpu" if _tpu_resolver() else
                    "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default")
    if strategy == "default":
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if strategy == "multiworker":
        if _tasks() < 1:
            raise ValueError("strategy='multiworker' needs TF_CONFIG describing the cluster, e.g. "
                             '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                             '"task": {"type": "worker", "index": 0}} on worker 0.')
        # Gradients travel in packs of up to 32 MB: one all-reduce per pack, not one per variable.
        packing = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=32 << 20)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=packing)
    resolver = _tpu_resolver()
    if resolver is None:
        raise ValueError("strategy='tpu' found no TPU: run on a TPU VM or Colab TPU runtime, or set "
                         "TPU_NAME; use strategy='auto' to fall back to the devices present.")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True on the worker that writes checkpoints and outputs (always, without a multi-worker cluster)."""
    task = _cluster().get("task", {})
    if not task or _tasks() <= 1:
        return True
    return task.get("type") == "chief" or (task.get("type") == "worker" and task.get("index", 0) == 0
                                           and "chief" not in _cluster().get("cluster", {}))


def describe(strategy: tf.distribute.Strategy) -> str:
    """'MirroredStrategy, 2 replica(s)' and the like ('one device' without distribution)."""
    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        return "one device"
    kinds = {"MultiWorkerMirroredStrategy": tf.distribute.MultiWorkerMirroredStrategy,  # class CollectiveAllReduce...
             "MirroredStrategy": tf.distribute.MirroredStrategy, "TPUStrategy": tf.distribute.TPUStrategy}
    name = next((label for label, k in kinds.items() if isinstance(strategy, k)), type(strategy).__name__)
    return f"{name}, {strategy.num_replicas_in_sync} replica(s)"


@contextlib.contextmanager
def fitting(model, strategy: tf.distribute.Strategy):
    """The scope for `model.fit` under `strategy`, working around two Keras 3 bugs with several workers.

    Under `MultiWorkerMirroredStrategy`, Keras 3's `fit` (keras-team/keras#20585)
    (1) reduces a distributed batch to build the model symbolically, which fails
    across workers, and (2) averages each step's logs over the workers with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on the scalar logs.
    Here the model (built already) is built lazily instead, as Keras does for
    models made outside a strategy, with the fit inside the strategy's scope
    where Keras then looks for it; and the train and test steps return their
    logs with a leading axis of one, so that reduction averages them over the
    workers. Elsewhere nothing changes.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        yield
        return
    saved = model._distribute_strategy
    model._distribute_strategy = None
    for name in ("train_step", "test_step"):
        setattr(model, name, _with_leading_axis(getattr(type(model), name).__get__(model)))
    try:
        with strategy.scope():
            yield
    finally:
        model._distribute_strategy = saved
        del model.train_step, model.test_step


def _with_leading_axis(step):
    def wrapped(data):
        return {k: tf.reshape(v, [1]) for k, v in step(data).items()}

    return wrapped
