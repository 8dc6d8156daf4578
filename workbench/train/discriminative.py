"""Discriminative learning rates: one optimizer, a smaller step for earlier stages.

`DiscriminativeOptimizer(inner, model, decay=2.6)` wraps any Keras 3
optimizer whose `update_step(gradient, variable, learning_rate)` uses the
learning rate it is given (SGD, Adam, AdamW, RMSprop, Nadam, Lion, ...). Each
variable's `update_step` runs with `learning_rate * multiplier[stage]`, and
decoupled weight decay (AdamW's `weight_decay`) uses the same scaled rate, so
the *update* of a stage is scaled, whatever the optimizer does with the
gradient. Scaling the gradient instead is not equivalent: Adam divides the
first moment by the root of the second, so a gradient multiplied by c gives
the same step (c cancels), and the earlier stages would train at the full rate.

The hook is the inner optimizer's own `update_step`, reached through its
normal `apply`, so gradient clipping, loss scaling (`LossScaleOptimizer` and
`loss_scale_factor`), gradient accumulation, EMA and `tf.distribute` (the TF
backend calls `update_step` per replica inside `extended.update`) all stay
the inner optimizer's unchanged code paths. For Adam, AdamW (without amsgrad)
and SGD the step itself is TensorFlow's fused kernel for the same arithmetic
(`ResourceApplyAdam`, `ResourceApplyKerasMomentum`, ...): one graph op per
variable instead of about twenty-five, which cuts the time to trace and
optimise a training step (see `python -m workbench.bench.startup`); the step
scalars (rates, beta powers) are computed once per step, not per variable.

Given the model, the optimizer is built for *every* variable that can ever
train (frozen layers included): a Keras 3 optimizer refuses variables it was
not built with, so this is what lets `GradualUnfreezing` unfreeze a stage
mid-`fit`. Stages are found by variable path (`stage3_block1_conv1/kernel` ->
stage3) with the model contract's `stage_of`; variables outside every stage get
multiplier 1. The wrapper is registered serializable: a compiled model saved
with `model.save("m.keras")` loads with `keras.models.load_model` (no
custom_objects, once `workbench` is imported) with its optimizer state.
"""
from __future__ import annotations

import weakref

import keras
import tensorflow as tf
from keras import ops
from keras.src import backend
from keras.src.utils import tracking

from workbench.utils import checks
from workbench.models.contract import STAGES, depth_from_head, model_stages, stage_of, trainable_candidates


def default_multipliers(decay: float = 2.6) -> dict[str, float]:
    """Learning-rate multiplier per stage: head 1, stage4 1/decay, ..., stem 1/decay**5."""
    decay = checks.lr_decay(decay)
    return {stage: decay ** -depth_from_head(stage) for stage in STAGES}


def resolve_multipliers(decay=2.6, multipliers=None, model=None) -> dict[str, float]:
    """Stage -> multiplier: `decay` defaults, overridden by `multipliers`; checked against the model."""
    out = default_multipliers(decay)
    for stage, m in (multipliers or {}).items():
        if stage not in STAGES:
            raise ValueError(f"multipliers has unknown stage {stage!r}; stages are {', '.join(STAGES)}.")
        out[stage] = checks.positive_number(f"multipliers[{stage!r}]", m)
    if model is not None and multipliers:
        present = model_stages(model)
        missing = [s for s in multipliers if s not in present]
        if missing:
            raise ValueError(f"multipliers name stage(s) {missing} that model '{model.name}' does not have "
                             f"(its stages: {present}).")
    return out


@keras.saving.register_keras_serializable(package="workbench")
class DiscriminativeOptimizer(keras.optimizers.Optimizer):
    """Wraps an optimizer so each stage's update is scaled by its multiplier (head 1, stage4 1/decay, ...)."""

    def __init__(self, optimizer="adamw", model=None, decay=2.6, multipliers=None, name=None, **kwargs):
        if kwargs:
            raise ValueError(f"DiscriminativeOptimizer does not take {sorted(kwargs)}: set them on the "
                             "inner optimizer (e.g. keras.optimizers.AdamW(learning_rate=..., clipnorm=...)).")
        super().__init__(learning_rate=0.0, name=name or "discriminative")
        inner = keras.optimizers.get(optimizer)
        if isinstance(inner, DiscriminativeOptimizer):
            raise ValueError("The inner optimizer is already a DiscriminativeOptimizer.")
        lr = inner._learning_rate
        if isinstance(lr, (int, float)) or hasattr(lr, "numpy"):
            try:
                checks.positive_number("learning_rate", float(ops.convert_to_numpy(lr)))
            except (TypeError, ValueError) as err:
                raise ValueError(f"The inner optimizer's learning rate must be > 0, got {lr!r}.") from err
        self.inner_optimizer = inner
        self.decay = checks.lr_decay(decay)
        self.multipliers = resolve_multipliers(decay, multipliers, model)
        self._model_ref = weakref.ref(model) if model is not None else None
        self._multiplier_by_key = {}
        self._step_scalars = {}  # per traced step: scaled rates and beta powers, shared by the variables
        # Route the inner optimizer's per-variable step through the scaled rate;
        # weight decay moves into the same step so it sees the scaled rate too.
        object.__setattr__(inner, "update_step", self._scaled_update_step)
        object.__setattr__(inner, "_apply_weight_decay", lambda variables: None)

    # ------------------------------------------------------------ the hook
    def multiplier_for(self, variable) -> float:
        """The multiplier of a model variable, from its stage (1 outside every stage)."""
        return self.multipliers.get(stage_of(getattr(variable, "path", variable.name)), 1.0)

    def _scalar(self, key, make):
        if key not in self._step_scalars:
            self._step_scalars[key] = make()
        return self._step_scalars[key]

    def _scaled_update_step(self, gradient, variable, learning_rate):
        inner = self.inner_optimizer
        m = self._multiplier_by_key.get(inner._var_key(variable), 1.0)
        dtype = variable.dtype
        lr = self._scalar(("lr", m, dtype), lambda: ops.multiply(ops.cast(learning_rate, dtype), ops.cast(m, dtype)))
        if inner.weight_decay is not None and inner._use_weight_decay(variable):
            decay = self._scalar(("decay", m, dtype), lambda: ops.multiply(ops.cast(inner.weight_decay, dtype), lr))
            if isinstance(variable, tf.Variable):
                tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=decay, delta=variable.value())
            else:
                inner.assign_sub(variable, ops.multiply(variable, decay))
        if not (isinstance(variable, tf.Variable) and self._fused_update_step(gradient, variable, lr)):
            type(inner).update_step(inner, gradient, variable, lr)

    def _fused_update_step(self, gradient, variable, lr) -> bool:
        """The inner optimizer's step as one TensorFlow kernel (Adam, AdamW, SGD); False if it has none."""
        inner, dtype = self.inner_optimizer, variable.dtype
        gradient = tf.cast(gradient, dtype)
        kind = type(inner)
        if kind in (keras.optimizers.Adam, keras.optimizers.AdamW) and not inner.amsgrad:
            i = inner._get_variable_index(variable)
            b1, b2 = (self._scalar((name, dtype), lambda b=beta: tf.cast(b, dtype))
                      for name, beta in (("beta_1", inner.beta_1), ("beta_2", inner.beta_2)))
            step = self._scalar(("step", dtype), lambda: tf.cast(inner.iterations + 1, dtype))
            b1_power = self._scalar(("beta_1_power", dtype), lambda: tf.pow(b1, step))
            b2_power = self._scalar(("beta_2_power", dtype), lambda: tf.pow(b2, step))
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=inner._momentums[i].value.handle, v=inner._velocities[i].value.handle,
                beta1_power=b1_power, beta2_power=b2_power, lr=lr, beta1=b1, beta2=b2,
                epsilon=self._scalar(("epsilon", dtype), lambda: tf.cast(inner.epsilon, dtype)), grad=gradient)
            return True
        if kind is keras.optimizers.SGD:
            if not inner.momentum:
                tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=lr, delta=gradient)
                return True
            accum = inner.momentums[inner._get_variable_index(variable)]
            tf.raw_ops.ResourceApplyKerasMomentum(var=variable.handle, accum=accum.value.handle, lr=lr,
                                                  grad=gradient, momentum=tf.cast(inner.momentum, dtype),
                                                  use_nesterov=inner.nesterov)
            return True
        return False

    # ------------------------------------------------------------ build / apply
    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        var_list = list(var_list)
        model = self._model_ref() if self._model_ref is not None else None
        if model is not None:
            candidates = trainable_candidates(model)
            known = {id(v) for v in candidates}
            var_list = candidates + [v for v in var_list if id(v) not in known]
        if not self.inner_optimizer.built:
            with backend.name_scope(self.inner_optimizer.name, caller=self.inner_optimizer):
                self.inner_optimizer.build(var_list)
        else:
            self.inner_optimizer._check_variables_are_known(var_list)
        self._multiplier_by_key = {self.inner_optimizer._var_key(v): self.multiplier_for(v)
                                   for v in self.inner_optimizer._trainable_variables}
        super().build(var_list)

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            if trainable_variables is None:
                raise ValueError("Build the optimizer first (optimizer.build(variables)) or pass the variables.")
            self.build(trainable_variables)
        self._step_scalars = {}
        try:
            self.inner_optimizer.apply(grads, trainable_variables)
        finally:
            self._step_scalars = {}

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise NotImplementedError("DiscriminativeOptimizer supports stateful backends (TensorFlow) only.")

    # ------------------------------------------------------------ delegation
    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def weight_decay_rate(self):
        return self.inner_optimizer.weight_decay

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        self.inner_optimizer.exclude_from_weight_decay(var_list, var_names)

    def finalize_variable_values(self, var_list):
        # Built for every variable that may train: finalize them all (EMA keeps one average per
        # built variable, and `fit` passes only those trainable now).
        inner = self.inner_optimizer
        inner.finalize_variable_values(inner._trainable_variables if inner.built else var_list)

    def get_config(self):
        return {"name": self.name, "decay": self.decay, "multipliers": dict(self.multipliers),
                "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)

    def __repr__(self):
        rates = ", ".join(f"{s} x{m:.3g}" for s, m in self.multipliers.items())
        return f"<DiscriminativeOptimizer {type(self.inner_optimizer).__name__}: {rates}>"


def inner_discriminative(optimizer):
    """The DiscriminativeOptimizer inside `optimizer` (possibly a LossScaleOptimizer), or None."""
    while optimizer is not None:
        if isinstance(optimizer, DiscriminativeOptimizer):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None
