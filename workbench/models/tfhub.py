"""TF Hub image models as fine-tunable Keras 3 layers.

`hub.KerasLayer` is a Keras 2 (tf_keras) layer: since TensorFlow 2.16 a Keras 3
model refuses it ("Only instances of `keras.Layer` can be added to a
Sequential model", tensorflow/hub#903). `HubBackbone` is the Keras 3
replacement for TF2 image feature-vector SavedModels (TF Hub / Kaggle Models
handles, or local folders such as a `wb.export(model, path, "hub")`):

    layer = wb.hub_backbone("https://tfhub.dev/adityakane2001/regnety200mf_feature_extractor/1")
    model = wb.hub_classifier("/models/my_hub_export", num_classes=5)

The SavedModel's variables become the layer's weights (each `tf.Variable`
wrapped, not copied, as a `keras.Variable`), so `layer.trainable_weights`
lists them, the optimizer updates them and `layer.trainable = False` freezes
them. `training` is passed to the SavedModel's `__call__` when it was saved
with that argument, and only while the layer is trainable, so batch-norm
statistics stay put in a frozen backbone.

Stages. `wb.stage_layers(model, stage)` groups layers by the prefix of their
name before the first "_" (`workbench.models.contract`). The backbone is one opaque layer, named
`stage4_hub` by default, so it is the "stage4" stage: an unfreeze schedule
such as "0:head,2:stage4" (or "all") trains the head first and then the whole
backbone, and discriminative learning rates give it stage4's multiplier.
Stages stem..stage3 are empty in such a model. `hub_classifier`'s rescaling
layer is `stem_rescale` (no weights), and its head is the contract's pooled
features (an identity on the feature vector, as in `wb.regnet`) and classifier.

Input range. Models from TF Hub expect float images in [0, 1] (the Hub
convention); the workbench's own "hub" export expects 0-255 like every
workbench model and records `input_range = [0, 255]` in the SavedModel.
`hub_classifier` always takes raw 0-255 images and rescales them to the
range the backbone expects: `input_range="auto"` reads it from the
SavedModel when recorded, else assumes Hub's (0, 1); pass a pair such as
(0, 1), (-1, 1) or (0, 255) to override.

Recipes select a Hub backbone with `variant="hub:<handle-or-path>"`, e.g.
`variant="hub:/data/regnety200mf_feature_extractor"`; `is_hub_variant` and
`hub_handle` parse that, and the recipe builds the model with
`hub_classifier(handle, num_classes, input_shape=(image_size, image_size, 3))`.

Saving. A model holding a `HubBackbone` saves to `.keras` (the config keeps
the handle or path, the file keeps the fine-tuned weights), but loading it
runs a SavedModel graph from that handle, which Keras treats like a
`TFSMLayer`: it needs `keras.saving.load_model(path, safe_mode=False)` and
the handle must still resolve (same local path, or network / TF Hub cache).
`wb.export(model, path, "saved_model" or "tflite")` needs neither.

Offline. A URL handle that is not in the TF Hub cache ($TFHUB_CACHE_DIR) is
checked with a quick DNS lookup first; without network the error names the
handle and says how to proceed: download the model on a machine with
network (for example `hub.resolve(handle)` or the Kaggle "Download" button,
then untar it) and pass the local folder.
"""
from __future__ import annotations

import os
import sys
import types
import urllib.parse
from pathlib import Path

import keras
import tensorflow as tf

from workbench.models.contract import FEATURES
from workbench.models.regnet import classifier_head
from workbench.utils.network import looks_offline

HUB_PREFIX = "hub:"
DEFAULT_NAME = "stage4_hub"
HUB_INPUT_RANGE = (0.0, 1.0)


class HubModelUnavailableError(RuntimeError):
    """A TF Hub handle could not be resolved (no network, not cached, not found)."""


def import_tensorflow_hub():
    """`import tensorflow_hub`, also where setuptools no longer ships `pkg_resources`.

    tensorflow-hub 0.16.1 imports `pkg_resources.parse_version` only to check
    the TensorFlow version; setuptools >= 81 removed `pkg_resources`. A
    stand-in backed by `packaging` is provided for that import only.
    """
    if "tensorflow_hub" in sys.modules:
        return sys.modules["tensorflow_hub"]
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import packaging.version

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=packaging.version.parse)
        try:
            import tensorflow_hub
        finally:
            sys.modules.pop("pkg_resources", None)
        return tensorflow_hub
    import tensorflow_hub
    return tensorflow_hub


# ---------------------------------------------------------------- resolving

def is_hub_variant(variant) -> bool:
    """True for recipe variants of the form "hub:<handle-or-path>"."""
    return isinstance(variant, str) and variant.strip().lower().startswith(HUB_PREFIX)


def hub_handle(variant: str) -> str:
    """"hub:<handle-or-path>" -> "<handle-or-path>"."""
    if not is_hub_variant(variant):
        raise ValueError(f"Expected a variant of the form 'hub:<handle-or-path>', got {variant!r}.")
    handle = variant.strip()[len(HUB_PREFIX):].strip()
    if not handle:
        raise ValueError("variant 'hub:' needs a handle or path after the colon, e.g. "
                         "'hub:https://tfhub.dev/adityakane2001/regnety200mf_feature_extractor/1'.")
    return handle


def _is_url(handle: str) -> bool:
    return urllib.parse.urlparse(handle).scheme in ("http", "https", "gs")


def _cached(handle: str) -> bool:
    """True when tensorflow_hub has already downloaded `handle` into its cache."""
    try:
        from tensorflow_hub import compressed_module_resolver
    except ImportError:
        return False
    try:
        return tf.io.gfile.isdir(compressed_module_resolver._module_dir(handle))
    except Exception:  # noqa: BLE001 - private API; treat as not cached
        return False


def _offline_error(handle, cause) -> HubModelUnavailableError:
    return HubModelUnavailableError(
        f"Cannot load the TF Hub model {handle!r}: {cause}. To proceed: on a machine with network "
        f"download it (`tensorflow_hub.resolve({handle!r})` prints the folder it was saved to, or "
        f"use the model page's Download button and untar the archive), copy that folder here and "
        f"pass the local folder's path instead of the handle; or set TFHUB_CACHE_DIR to a cache that holds it.")


def _check_saved_model(path: Path, handle) -> None:
    if not path.exists():
        raise FileNotFoundError(f"Hub model path {str(handle)!r} does not exist: expected a TF Hub "
                                f"handle (https://...) or a folder holding a TF2 SavedModel "
                                f"(saved_model.pb and variables/).")
    if path.is_dir() and (path / "tfhub_module.pb").exists() and not (path / "saved_model.pb").exists():
        raise ValueError(f"{str(handle)!r} is a TF1 Hub module (tfhub_module.pb); Keras 3 needs a "
                         f"TF2 SavedModel: pick the model's TF2 version on TF Hub / Kaggle Models.")
    if not (path.is_dir() and tf.saved_model.contains_saved_model(str(path))):
        what = "a file" if path.is_file() else "a folder without saved_model.pb"
        raise ValueError(f"Hub model path {str(handle)!r} is {what}: expected a folder holding a TF2 "
                         f"SavedModel (saved_model.pb and variables/), e.g. from "
                         f"wb.export(model, path, 'hub') or a downloaded and untarred TF Hub model.")


def load_hub_model(handle_or_path):
    """`hub.load` with errors that say what to do: the loaded TF2 SavedModel object."""
    handle = str(handle_or_path).strip() if isinstance(handle_or_path, (str, os.PathLike)) else None
    if not handle:
        raise TypeError(f"Expected a TF Hub handle or a SavedModel folder, got {handle_or_path!r}.")
    if not _is_url(handle):
        _check_saved_model(Path(handle).expanduser(), handle)
        return tf.saved_model.load(str(Path(handle).expanduser()))
    hub = import_tensorflow_hub()
    if not _cached(handle):
        host = urllib.parse.urlparse(handle).hostname or ""
        if host and looks_offline(hosts=(host,), timeout=5.0):
            raise _offline_error(handle, f"no network (cannot resolve {host}) and it is not in "
                                         f"the TF Hub cache")
    try:
        return hub.load(handle)
    except Exception as err:  # noqa: BLE001 - URLError, HTTPError, bad archives ...
        raise _offline_error(handle, f"{type(err).__name__}: {err}") from err


# ---------------------------------------------------------------- the layer

def _training_values(fn) -> set:
    """The `training` values `fn` (a restored tf.function) was saved with; empty if none."""
    values = set()
    for concrete in getattr(fn, "concrete_functions", None) or []:
        try:
            args, kwargs = concrete.structured_input_signature
        except Exception:  # noqa: BLE001
            continue
        if "training" in kwargs and isinstance(kwargs["training"], bool):
            values.add(kwargs["training"])
        elif len(args) > 1 and isinstance(args[1], bool):
            values.add(args[1])
    return values


@keras.saving.register_keras_serializable(package="workbench")
class HubBackbone(keras.layers.Layer):
    """A TF2 Hub image model (handle or SavedModel folder) as a fine-tunable Keras 3 layer.

    Inputs go to the SavedModel unchanged (see `hub_classifier` for 0-255
    images). `output_key` picks one output when the model returns a dict
    (default: "default", "feature_vector" or the only entry).
    """

    def __init__(self, handle, trainable=True, output_key=None, signature=None, **kwargs):
        kwargs.setdefault("name", DEFAULT_NAME)
        super().__init__(trainable=trainable, **kwargs)
        self.handle = str(handle)
        self.output_key = output_key
        self.signature = signature
        self._hub = load_hub_model(self.handle)
        if signature:
            signatures = getattr(self._hub, "signatures", {})
            if signature not in signatures:
                raise ValueError(f"{self.handle!r} has no signature {signature!r}; it has "
                                 f"{sorted(signatures)}.")
            self._fn = signatures[signature]
            self._training_values = set()
        elif callable(self._hub):
            self._fn = self._hub.__call__
            self._training_values = _training_values(self._fn)
        elif "serving_default" in getattr(self._hub, "signatures", {}):
            self._fn = self._hub.signatures["serving_default"]
            self._training_values = set()
        else:
            raise ValueError(f"{self.handle!r} is a SavedModel without __call__ or a serving_default "
                             f"signature: expected a TF2 Hub image model.")
        self._track_hub_variables()
        self.input_range = self._recorded_input_range()
        self.built = True

    def _track_hub_variables(self):
        """Expose the SavedModel's tf.Variables as this layer's (shared, not copied) weights.

        Uses the Hub attributes `variables` / `trainable_variables` when the
        SavedModel has them, else the variables its call function captures.
        """
        hub_vars = list(getattr(self._hub, "variables", None) or [])
        if not hub_vars:
            for concrete in getattr(self._fn, "concrete_functions", None) or [self._fn]:
                hub_vars += list(getattr(concrete, "variables", None) or [])
        trainable_ids = {id(v) for v in getattr(self._hub, "trainable_variables", None) or []}
        if not trainable_ids:  # no list: trust each variable's own flag
            trainable_ids = {id(v) for v in hub_vars if v.trainable}
        wrapped, seen = [], set()
        for i, v in enumerate(hub_vars):
            if id(v) in seen:
                continue
            seen.add(id(v))
            name = v.name.split(":")[0].replace("/", "_") or f"variable_{i}"
            wrapped.append(keras.Variable(initializer=v, trainable=id(v) in trainable_ids,
                                          dtype=v.dtype, shape=v.shape, name=name))
        # Assigning a list of keras.Variables to a layer attribute tracks them as its weights.
        self.hub_variables = wrapped
        self._regularization_losses = list(getattr(self._hub, "regularization_losses", None) or [])

    def _recorded_input_range(self):
        value = getattr(self._hub, "input_range", None)
        try:
            lo, hi = (float(x) for x in tf.convert_to_tensor(value).numpy())
            return lo, hi
        except Exception:  # noqa: BLE001 - not recorded: the Hub convention applies
            return None

    def call(self, inputs, training=None):
        x = tf.cast(inputs, tf.float32)
        train = bool(training) and self.trainable if not tf.is_tensor(training) else training
        if self._training_values and (train is False or train in self._training_values):
            out = self._fn(x, training=train)
        elif self._training_values and tf.is_tensor(train):
            out = tf.cond(train, lambda: self._fn(x, training=True), lambda: self._fn(x, training=False))
        else:
            out = self._fn(x)
        return self._select(out)

    def _select(self, out):
        if not isinstance(out, dict):
            return out
        if self.output_key:
            if self.output_key not in out:
                raise ValueError(f"output_key {self.output_key!r} not among the outputs {sorted(out)}.")
            return out[self.output_key]
        for key in ("default", "feature_vector", "features", "output_0"):
            if key in out:
                return out[key]
        if len(out) == 1:
            return next(iter(out.values()))
        raise ValueError(f"{self.handle!r} returns several outputs {sorted(out)}: pick one with output_key.")

    @property
    def losses(self):
        return super().losses + [loss() if callable(loss) else loss
                                 for loss in self._regularization_losses if self.trainable]

    def get_config(self):
        return {**super().get_config(), "handle": self.handle, "output_key": self.output_key,
                "signature": self.signature}

    @classmethod
    def from_config(cls, config):
        from keras.src.saving import serialization_lib

        if serialization_lib.in_safe_mode() is not False:
            raise ValueError(
                f"This model contains a TF Hub backbone ({config.get('handle')!r}); loading it runs "
                f"that SavedModel's graph, which Keras only allows outside safe mode (as for "
                f"keras.layers.TFSMLayer). If you trust the file and the Hub model, load with "
                f"keras.saving.load_model(path, safe_mode=False).")
        return cls(**config)


def hub_backbone(handle_or_path, trainable=True, input_shape=None, name=DEFAULT_NAME, **kwargs):
    """A Keras 3 layer around `hub.load(handle_or_path)` whose variables train with the model.

    `input_shape` (h, w, 3), when given, is only used to check that the
    model runs on such images and to build eagerly; the layer is built either way.
    """
    layer = HubBackbone(handle_or_path, trainable=trainable, name=name, **kwargs)
    if input_shape is not None:
        layer.compute_output_spec(keras.KerasTensor((None, *tuple(input_shape))))
    return layer


def hub_classifier(handle_or_path, num_classes, input_shape=(224, 224, 3), trainable=True,
                   input_range="auto", classifier_activation="softmax", dropout=0.0,
                   name=None, seed=0) -> keras.Model:
    """Raw 0-255 images -> rescale to the backbone's range -> Hub backbone -> the Dense classifier.

    `input_range`: "auto" (what the SavedModel records, else the Hub
    convention (0, 1)), or a pair (lo, hi) the backbone expects. The model
    keeps the workbench's model contract (`workbench.models.contract`); `seed` initializes the head.
    """
    backbone = hub_backbone(handle_or_path, trainable=trainable)
    if input_range == "auto":
        input_range = backbone.input_range or HUB_INPUT_RANGE
    lo, hi = (float(v) for v in input_range)
    inputs = keras.Input(tuple(input_shape), name="image")
    x = keras.layers.Rescaling((hi - lo) / 255.0, offset=lo, name="stem_rescale")(inputs)
    x = backbone(x)
    if len(x.shape) != 2:
        raise ValueError(f"{backbone.handle!r} outputs shape {tuple(x.shape)}, expected a feature "
                         f"vector (batch, features): use the model's feature-vector version.")
    # The pooled-feature layer of the contract: feature caching and the 'hub' export find it.
    x = keras.layers.Identity(name=FEATURES)(x)
    outputs = classifier_head(x, num_classes, classifier_activation, dropout, seed)
    return keras.Model(inputs, outputs, name=name or "hub_classifier")
