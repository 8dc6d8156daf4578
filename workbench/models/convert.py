"""Import of published RegNet weights into the Keras model.

Every format is read into one table, ``{our layer name: {variable: array}}``,
then assigned with shape checks, so a file of another variant fails on the
first mismatching tensor. Formats: keras.applications `.h5` (what
``weights="keras"`` downloads), timm / pycls state dicts (`.safetensors`, what
the Hub tags download, `.pth`, `.pyth`) and Keras 3 `.weights.h5`; detected
from the file's content. Tags and Hub ids are resolved by `workbench.models.published`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from workbench.models import published
from workbench.models.contract import CLASSIFIER, stage_of
from workbench.models.published import WeightsUnavailableError

KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/regnet/"
CACHE_DIR = None  # None: Keras' own cache (~/.keras/models), shared with keras.applications
# sha256 of keras.applications' regnet{x,y}NNN.h5 and regnet{x,y}NNN_notop.h5.
KERAS_HASHES = {
    "x002": ("49fb46e56cde07fdaf57bffd851461a86548f6a3a4baef234dd37290b826c0b8",
             "5445b66cd50445eb7ecab094c1e78d4d3d29375439d1a7798861c4af15ffff21"),
    "x004": ("3523c7f5ac0dbbcc2fd6d83b3570e7540f7449d3301cc22c29547302114e4088",
             "de139bf07a66c9256f2277bf5c1b6dd2d5a3a891a5f8a925a10c8a0a113fd6f3"),
    "x006": ("340216ef334a7bae30daac9f414e693c136fac9ab868704bbfcc9ce6a5ec74bb",
             "a43ec97ad62f86b2a96a783bfdc63a5a54de02eef54f26379ea05e1bf90a9505"),
    "x008": ("8f145d6a5fae6da62677bb8d26eb92d0b9dfe143ec1ebf68b24a57ae50a2763d",
             "3c7e4b0917359304dc18e644475c5c1f5e88d795542b676439c4a3acd63b7207"),
    "x016": ("31c386f4c7bfef4c021a583099aa79c1b3928057ba1b7d182f174674c5ef3510",
             "1b8e3d545d190271204a7b2165936a227d26b79bb7922bac5ee4d303091bf17a"),
    "x032": ("6c025df1409e5ea846375bc9dfa240956cca87ef57384d93fef7d6fa90ca8c7f",
             "9cd4522806c0fcca01b37874188b2bd394d7c419956d77472a4e072b01d99041"),
    "x040": ("ba128046c588a26dbd3b3a011b26cb7fa3cf8f269c184c132372cb20b6eb54c1",
             "b4ed0ca0b9a98e789e05000e830403a7ade4d8afa01c73491c44610195198afe"),
    "x064": ("0f4489c3cd3ad979bd6b0324213998bcb36dc861d178f977997ebfe53c3ba564",
             "3e706fa416a18dfda14c713423eba8041ae2509db3e0a611d5f599b5268a46c4"),
    "x080": ("76320e43272719df648db37271a247c22eb6e810fe469c37a5db7e2cb696d162",
             "7b1ce8e29ceefec10a6569640ee329dba7fbc98b5d0f6346aabade058b66cf29"),
    "x120": ("5cafc461b78897d5e4f24e68cb406d18e75f31105ef620e7682b611bb355eb3a",
             "36174ddd0299db04a42631d028abcb1cc7afec2b705e42bd28fcd325e5d596bf"),
    "x160": ("8093f57a5824b181fb734ea21ae34b1f7ee42c5298e63cf6d587c290973195d2",
             "9d1485050bdf19531ffa1ed7827c75850e0f2972118a996b91aa9264b088fd43"),
    "x320": ("91fb3e6f4e9e44b3687e80977f7f4412ee9937c0c704232664fc83e4322ea01e",
             "9db7eacc37b85c98184070e1a172e6104c00846f44bcd4e727da9e50d9692398"),
    "y002": ("1e8091c674532b1a61c04f6393a9c570113e0197f22bd1b98cc4c4fe800c6465",
             "f63221f63d625b8e201221499682587bfe29d33f50a4c4f4d53be00f66c0f12c"),
    "y004": ("752fdbad21c78911bf1dcb8c513e5a0e14697b068e5d9e73525dbaa416d18d8e",
             "45e6ba8309a17a77e67afc05228454b2e0ee6be0dae65edc0f31f1da10cc066b"),
    "y006": ("98942e07b273da500ff9699a1f88aca78dfad4375faabb0bab784bb0dace80a9",
             "b70261cba4e60013c99d130cc098d2fce629ff978a445663b6fa4f8fc099a2be"),
    "y008": ("1b099377cc9a4fb183159a6f9b24bc998e5659d25a449f40c90cbffcbcfdcae4",
             "b11f5432a216ee640fe9be6e32939defa8d08b8d136349bf3690715a98752ca1"),
    "y016": ("b7ce1f5e223f0941c960602de922bcf846288ce7a4c33b2a4f2e4ac4b480045b",
             "d7404f50205e82d793e219afb9eb2bfeb781b6b2d316a6128c6d7d7dacab7f57"),
    "y032": ("6a6a545cf3549973554c9b94f0cd40e25f229fffb1e7f7ac779a59dcbee612bd",
             "eb3ac1c45ec60f4f031c3f5180573422b1cf7bebc26c004637517372f68f8937"),
    "y040": ("98d00118b335162bbffe8f1329e54e5c8e75ee09b2a5414f97b0ddfc56e796f6",
             "b5be2a5e5f072ecdd9c0b8a437cd896df0efa1f6a1f77e41caa8719b7dfcb05d"),
    "y064": ("65c948c7a18aaecaad2d1bd4fd978987425604ba6669ef55a1faa0069a2804b7",
             "885c4b7ed7ea339daca7dafa1a62cb7d41b1068897ef90a5a3d71b4a2e2db31a"),
    "y080": ("7a2c62da2982e369a4984d3c7c3b32d6f8d3748a71cb37a31156c436c37f3e95",
             "3d119577e1e3bf8d153b895e8ea9e4ec150ff2d92abdca711b6e949c3fd7115d"),
    "y120": ("a96ab0d27d3ae35a422ee7df0d789069b3e3217a99334e0ce861a96595bc5986",
             "4a6fa387108380b730b71feea2ad80b5224b5ea9dc21dc156c93fe3c6186485c"),
    "y160": ("45067240ffbc7ca2591313fee2f80dbdda6d66ec1a7451446f9a6d00d8f7ac6e",
             "ead1e6b568be8f34447ec8941299a9df4368736ba9a8205de5427fa20a1fb316"),
    "y320": ("b05e173e4ae635cfa22d06392ee3741284d17dadfee68f2aa6fd8cb2b7561112",
             "cad78f74a586e24c61d38be17f3ae53bb9674380174d2585da1a526b8c20e1fd"),
}

# Block parts: our suffix <- keras.applications suffix, timm name, pycls name.
_KERAS_PARTS = {
    "conv_1x1_1": "conv1", "conv_1x1_1_bn": "bn1", "conv_3x3": "conv2", "conv_3x3_bn": "bn2",
    "squeeze_and_excite_squeeze": "se_reduce", "squeeze_and_excite_excite": "se_expand",
    "conv_1x1_2": "conv3", "conv_1x1_2_bn": "bn3", "skip_1x1": "proj_conv", "skip_bn": "proj_bn",
}
_TIMM_PARTS = {
    "conv1.conv": "conv1", "conv1.bn": "bn1", "conv2.conv": "conv2", "conv2.bn": "bn2",
    "se.fc1": "se_reduce", "se.fc2": "se_expand", "conv3.conv": "conv3", "conv3.bn": "bn3",
    "downsample.conv": "proj_conv", "downsample.bn": "proj_bn",
}
_BYOB_PARTS = {  # timm's ByobNet (RegNetZ B/C/D/E)
    "conv1_1x1.conv": "conv1", "conv1_1x1.bn": "bn1", "conv2_kxk.conv": "conv2", "conv2_kxk.bn": "bn2",
    "attn.fc1": "se_reduce", "attn.fc2": "se_expand", "conv3_1x1.conv": "conv3", "conv3_1x1.bn": "bn3",
    "shortcut.conv": "proj_conv", "shortcut.bn": "proj_bn",
}
_PYCLS_PARTS = {
    "f.a": "conv1", "f.a_bn": "bn1", "f.b": "conv2", "f.b_bn": "bn2",
    "f.se.f_ex.0": "se_reduce", "f.se.f_ex.2": "se_expand", "f.c": "conv3", "f.c_bn": "bn3",
    "proj": "proj_conv", "bn": "proj_bn",
}
_TORCH_VARS = {"weight": "kernel", "bias": "bias", "running_mean": "moving_mean",
               "running_var": "moving_variance"}


@dataclasses.dataclass
class WeightSource:
    """Weights read from a file, keyed by our layer and variable names."""

    path: str
    format: str
    convention: str                      # see workbench.models.regnet.CONVENTIONS
    tensors: dict                        # layer -> {variable name or index: array}
    origin: dict                         # (layer, variable) -> name in the file
    keep_head: bool = True               # False: never load the head, even if it fits

    def assign(self, model):
        """Copy the tensors into `model`, checking names and shapes."""
        if self.format == KERAS3:
            self._rename(_keras3_paths(model))
        used = set()
        for layer in model.layers:
            if not layer.weights:
                continue
            if stage_of(layer.name) == "head" and not self._head_fits(layer):
                continue                  # dropped: a fresh head for another number of classes
            if layer.name not in self.tensors:
                raise ValueError(
                    f"{self.path} ({self.format}) has no weights for layer {layer.name!r} of "
                    f"{model.name}: the file is for a different architecture or variant.")
            table = self.tensors[layer.name]
            values = []
            for i, var in enumerate(layer.weights):
                key = var.name if var.name in table else i
                if key not in table:
                    raise ValueError(f"{self.path}: no tensor for {layer.name}/{var.name}.")
                value = table[key]
                if tuple(value.shape) != tuple(var.shape):
                    raise ValueError(
                        f"{self.path} does not fit {model.name}: first mismatching tensor is "
                        f"{self.origin.get((layer.name, key), key)!r} with shape {tuple(value.shape)} "
                        f"in the file, but {layer.name}/{var.name} has shape {tuple(var.shape)} in "
                        f"the model. Is the file for another variant?")
                values.append(value)
            layer.set_weights(values)
            used.add(layer.name)
        extra = [n for n in self.tensors if n not in used and stage_of(n) != "head"]
        if extra:
            raise ValueError(
                f"{self.path} has weights for {extra[0]!r} (and {len(extra) - 1} more layers) that "
                f"{model.name} does not have: the file is for a different architecture or variant.")


    def _head_fits(self, layer):
        table = self.tensors.get(layer.name, {})
        return self.keep_head and len(table) == len(layer.weights) and all(
            tuple(table.get(v.name, table.get(i, np.empty(0))).shape) == tuple(v.shape)
            for i, v in enumerate(layer.weights))

    def _rename(self, names):
        """Re-key tensors stored under other names (``{our name: stored name}``)."""
        back = {stored: ours for ours, stored in names.items()}
        self.origin = {(back.get(layer, layer), key): v for (layer, key), v in self.origin.items()}
        self.tensors = {back.get(layer, layer): t for layer, t in self.tensors.items()}


def _keras3_paths(model):
    """Keras 3 saves a functional model's layers by class name in order: conv2d, conv2d_1, ..."""
    from keras.src.utils.naming import to_snake_case
    used, names = {}, {}
    for layer in model.layers:
        name = to_snake_case(type(layer).__name__)
        used[name] = used.get(name, -1) + 1
        names[layer.name] = f"{name}_{used[name]}" if used[name] else name
    return names


def fetch_weights(weights, config, include_top=True):
    """Local path of `weights`: a file as it is; a tag or Hub id resolved and downloaded once; None."""
    if weights is None:
        return None
    path = os.fspath(weights)
    if os.path.isfile(path):
        return path
    if not published.is_name(path):
        raise FileNotFoundError(
            f"weights file {path!r} does not exist. Pass weights=None, a tag ('imagenet', 'pycls', "
            f"'keras', wb.list_weights() lists them), a Hub id, or the path of a keras.applications "
            f".h5, a timm/pycls .safetensors/.pth/.pyth, or a Keras 3 .weights.h5 file.")
    return fetch_published(published.resolve(config, path), config, include_top)


def fetch_published(info, config, include_top=True):
    """Local path of the published weights `info` (a row of `published.resolve`), downloaded once."""
    if info.tag == "keras":
        return download_imagenet(config, include_top)
    path = published.fetch(info)
    check_safetensors(path, f"{info.file} of {info.hub_id} (cached as {os.path.realpath(path)})",
                      "delete that file and load again, or pass a good copy as weights='/path/to/file'")
    return path


def open_weights(weights, config, include_top=True, num_classes=1000):
    """A WeightSource for `weights` (None, a tag, a Hub id or a path), or None."""
    path = fetch_weights(weights, config, include_top and num_classes == 1000)
    if path is None:
        return None
    source = _read(path)
    source.keep_head = include_top
    return source


def check_safetensors(path, what=None, remedy="download it again"):
    """ValueError in one sentence unless `path` is a complete safetensors file."""
    what = what or repr(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = f.read(n) if 0 < n <= min(size - 8, 100_000_000) else b""
    try:
        tensors = json.loads(header)
        end = max((t["data_offsets"][1] for k, t in tensors.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError):
        raise ValueError(f"{what} is not a safetensors file (no valid safetensors header); the workbench "
                         f"reads downloaded weights as safetensors only, never pickle: {remedy}.") from None
    if size != 8 + n + end:
        raise ValueError(f"{what} is truncated or corrupt: {size:,} bytes where its header describes "
                         f"{8 + n + end:,}; {remedy}.")


def _read(path):
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x89HDF"):
        return _read_h5(path)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return _read_torch(path)
    if len(head) >= 9 and head[8:9] == b"{":
        from safetensors.numpy import load_file
        check_safetensors(path)
        return _from_state_dict(path, load_file(path), "safetensors")
    raise ValueError(
        f"{path!r} is not a weights file this workbench can read: expected an HDF5 file "
        f"(keras.applications .h5 or Keras 3 .weights.h5), a safetensors file or a PyTorch "
        f"checkpoint (.pth/.pyth).")


def _read_h5(path):
    import h5py
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            return _read_keras_h5(path, root)
        if "layers" in f:
            return _read_keras3(path, f)
    raise ValueError(f"{path!r} is an HDF5 file but holds no Keras weights "
                     f"(no 'layer_names' attribute and no 'layers' group).")


def _read_keras_h5(path, root):
    """keras.applications / tf_keras `.h5`: layer names like regnety006_Stage_1_YBlock_0_conv_3x3."""
    tensors, origin = {}, {}
    for raw in root.attrs["layer_names"]:
        name = raw.decode() if isinstance(raw, bytes) else raw
        ours = _keras_layer_name(name)
        group = root[name]
        for wraw in group.attrs.get("weight_names", []):
            wname = wraw.decode() if isinstance(wraw, bytes) else wraw
            if ours is None:
                raise ValueError(f"{path}: layer {name!r} is not part of a keras.applications RegNet.")
            var = wname.split("/")[-1].split(":")[0]
            tensors.setdefault(ours, {})[var] = np.asarray(group[wname])
            origin[(ours, var)] = wname
    return WeightSource(path, "keras.applications h5", "keras", tensors, origin)


def _keras_layer_name(name):
    m = re.search(r"_Stage_(\d+)_[XYZ]Block_(\d+)_(.+)$", name)
    if m and m.group(3) in _KERAS_PARTS:
        return f"stage{int(m.group(1)) + 1}_block{int(m.group(2)) + 1}_{_KERAS_PARTS[m.group(3)]}"
    for suffix, ours in (("_stem_conv", "stem_conv"), ("_stem_bn", "stem_bn"), ("head_dense", CLASSIFIER)):
        if name.endswith(suffix):
            return ours
    return None


KERAS3 = "Keras 3 .weights.h5"


def _read_keras3(path, f):
    """Keras 3 `.weights.h5` of a workbench model: layers/<class name>_<n>/vars/<i>."""
    tensors, origin = {}, {}
    layers = f["layers"]
    for name in layers:
        if "vars" in layers[name] and len(layers[name]["vars"]):
            tensors[name] = {int(i): np.asarray(v) for i, v in layers[name]["vars"].items()}
            origin.update({(name, int(i)): f"layers/{name}/vars/{i}" for i in layers[name]["vars"]})
    convention = "torch" if "zero_padding2d" in layers else "keras"
    return WeightSource(path, KERAS3, convention, tensors, origin)


def _read_torch(path):
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{path!r} is a PyTorch checkpoint; reading it needs torch (`pip install torch`), "
            f"or convert it to .safetensors where torch is installed.") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model_state", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    arrays = {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
    return _from_state_dict(path, arrays, "PyTorch checkpoint")


def _from_state_dict(path, state, kind):
    """timm or pycls parameter names to ours; PyTorch layouts to Keras layouts."""
    pycls = any(".f.a." in k or k.startswith("s1.b1.f.") for k in state)
    parts = _PYCLS_PARTS if pycls else _TIMM_PARTS
    tensors, origin = {}, {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        module, _, var = key.rpartition(".")
        m = re.fullmatch(r"s(\d)\.b(\d+)\.(.+)", module)
        byob = re.fullmatch(r"stages\.(\d)\.(\d+)\.(.+)", module)
        stem = re.fullmatch(r"stem\.conv(\d)\.(conv|bn)", module)
        if m and m.group(3) in parts:
            layer = f"stage{m.group(1)}_block{m.group(2)}_{parts[m.group(3)]}"
        elif byob and byob.group(3) in _BYOB_PARTS:
            layer = f"stage{int(byob.group(1)) + 1}_block{int(byob.group(2)) + 1}_{_BYOB_PARTS[byob.group(3)]}"
        elif module in ("stem.conv", "stem.bn"):
            layer = module.replace(".", "_")
        elif stem:                                       # the tiered stem: stem.conv1.conv, stem.conv1.bn, ...
            layer = f"stem_{stem.group(2)}{stem.group(1)}"
        elif module in ("final_conv.conv", "final_conv.bn"):
            layer = f"stage4_final_{module.split('.')[1]}"
        elif module == "head.fc":
            layer = CLASSIFIER
        else:
            raise ValueError(f"{path}: tensor {key!r} is not part of a timm or pycls RegNet (X, Y or Z).")
        value = np.asarray(value, dtype=np.float32)
        if var == "weight" and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)          # (out, in, kh, kw) -> (kh, kw, in, out)
            if pycls and layer == "stem_conv":
                value = value[:, :, ::-1, :]             # pycls reads BGR images
        elif var == "weight" and value.ndim == 2:
            value = value.T
        name = ("gamma" if value.ndim == 1 and var == "weight" else
                "beta" if layer.split("_")[-1].startswith("bn") and var == "bias" else _TORCH_VARS[var])
        tensors.setdefault(layer, {})[name] = np.ascontiguousarray(value)
        origin[(layer, name)] = key
    return WeightSource(path, f"{'pycls' if pycls else 'timm'} {kind}", "torch", tensors, origin)


def download_imagenet(config, include_top=True):
    """Path of the cached keras.applications ImageNet weights (weights="keras"); downloads them once."""
    from workbench.models.design import size_code
    family, _, size = config.name.partition("_")
    code = f"{family[-1]}{size_code(size)}" if family in ("regnetx", "regnety") and size else None
    if code not in KERAS_HASHES:
        raise ValueError(
            f"No keras.applications weights for {config.name!r}: they exist for the 24 sizes of the "
            f"paper only. Pass weights=None, another tag (wb.list_weights()) or a weights file.")
    fname = f"regnet{code}{'' if include_top else '_notop'}.h5"
    url = KERAS_BASE_URL + fname
    import keras
    try:
        return keras.utils.get_file(fname, url, file_hash=KERAS_HASHES[code][0 if include_top else 1],
                                    cache_subdir="models", cache_dir=CACHE_DIR)
    except Exception as e:
        raise WeightsUnavailableError(
            f"Could not download the keras.applications weights {fname} for {config.name} from {url} "
            f"({type(e).__name__}: {e}). With no network: download that file on a machine that "
            f"has one, then pass weights='/path/to/{fname}', or copy it to "
            f"~/.keras/models/{fname} and use weights='keras'.") from e
