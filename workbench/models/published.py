"""Published RegNet weights: the table, tag resolution and the Hugging Face Hub download.

`published.csv` (next to this file) has one row per variant and tag. Its figures come from:

- Hub id, native train / test image size, crop fractions, number of classes, license: timm's
  pretrained configs (`timm/models/regnet.py` and, for RegNetZ B/C/D/E, `timm/models/byobnet.py`,
  `default_cfgs`, timm 1.0.31); convention "half" is their mean = std = 0.5 input.
- top-1: timm's published ImageNet-1k validation results, `results/results-imagenet.csv` of
  huggingface/pytorch-image-models at commit 0173a139a2c66db3a41ebfe1d8ac4fb02483642e, measured at
  `top1_size` px (the test size). Empty where timm publishes none (ImageNet-12k heads, SEER
  pretraining without a head) and for keras.applications, whose authors publish no per-model figure.
- keras rows: keras.applications' files, distributed with Keras under its Apache-2.0 license.
- revision: timm's configs pin no Hub commit for RegNet weights, so every row says "main"; a
  maintainer can write a commit hash there. A file already in the Hugging Face cache is used without
  asking the Hub again, so a model never changes under a user once downloaded.

`"imagenet"` picks, for the variant, the ImageNet-1k weights with the highest top-1 under a license
that allows commercial use (`COMMERCIAL`); ties go to the first tag alphabetically.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import importlib
import os
import re
from pathlib import Path

from workbench.utils.network import reachable

COMMERCIAL = ("mit", "bsd-3-clause", "apache-2.0")
LICENSE_NOTES = {
    "cc-by-nc-4.0": "Creative Commons BY-NC 4.0: non-commercial use only",
    "seer-license": "the SEER license (github.com/facebookresearch/vissl): no commercial use",
}
WEIGHT_EXTENSIONS = (".h5", ".keras", ".safetensors", ".pth", ".pyth", ".pt", ".bin", ".ckpt")
_HUB_ID = re.compile(r"(hf-hub:)?[\w.-]+/[\w.-]+(@[\w.-]+)?")
_TAG = re.compile(r"[a-z0-9_]+")
_announced = set()


class WeightsUnavailableError(OSError):
    """Published weights could not be had (offline, unreachable, failed download); says how to supply them."""


@dataclasses.dataclass(frozen=True)
class WeightInfo:
    """One row of the weights table."""

    variant: str
    tag: str
    hub_id: str                  # "" for keras.applications files
    file: str
    revision: str
    top1: float | None           # published ImageNet-1k top-1 (%), at top1_size px
    top1_size: int | None
    train_size: int
    test_size: int
    crop_pct: float | None
    test_crop_pct: float | None
    num_classes: int
    convention: str              # workbench.models.regnet.CONVENTIONS: input normalization and padding
    license: str

    @property
    def commercial(self) -> bool:
        return self.license in COMMERCIAL

    @property
    def name(self) -> str:
        return self.hub_id or f"keras.applications {self.file}"


def _number(text, kind):
    return kind(text) if text != "" else None


@functools.cache
def table() -> tuple[WeightInfo, ...]:
    """Every row of `published.csv`."""
    with open(Path(__file__).with_name("published.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    kinds = {f.name: f.type for f in dataclasses.fields(WeightInfo)}
    out = []
    for row in rows:
        values = {}
        for key, text in row.items():
            kind = kinds[key]
            values[key] = (_number(text, float) if "float" in kind else
                           _number(text, int) if "int" in kind else text)
        out.append(WeightInfo(**values))
    return tuple(out)


def _variant_name(variant) -> str:
    from workbench.models.design import resolve_variant
    return variant.name if hasattr(variant, "stages") else resolve_variant(variant)


def timm_name(variant) -> str:
    """timm's architecture name: regnety_1.6gf -> regnety_016, regnety_8gf_tv -> regnety_080_tv; RegNetZ as is."""
    from workbench.models.design import size_code
    name = _variant_name(variant)
    if name.startswith("regnetz"):
        return name
    family, size, *tv = name.split("_")
    return "_".join([family, size_code(size), *tv])


def tags(variant) -> list[str]:
    """The tags published for `variant`."""
    name = _variant_name(variant)
    return [r.tag for r in table() if r.variant == name]


def best(variant) -> WeightInfo | None:
    """What "imagenet" means for `variant`: the most accurate ImageNet-1k weights under a commercial license."""
    name = _variant_name(variant)
    rows = [r for r in table() if r.variant == name and r.commercial and r.num_classes == 1000
            and r.top1 is not None]
    return min(rows, key=lambda r: (-r.top1, r.tag), default=None)


class WeightTable(list):
    """Rows of the weights table; prints as a text table (`*` marks what "imagenet" picks)."""

    def __repr__(self):
        defaults = {best(v) for v in dict.fromkeys(r.variant for r in self)}
        lines = [f"{'variant':<17}{' tag':<22}{'top-1':>7}{'@px':>5}{'train/test':>11}  {'crop':<12}"
                 f"{'license':<14}{'Hub id / file'}"]
        for r in self:
            top1 = f"{r.top1:.2f}" if r.top1 is not None else "-"
            crop = f"{r.crop_pct}/{r.test_crop_pct}" if r.crop_pct else "-"
            lines.append(f"{r.variant:<17}{('*' if r in defaults else ' ') + r.tag:<22}{top1:>7}"
                         f"{r.top1_size or '':>5}{f'{r.train_size}/{r.test_size}':>11}  {crop:<12}"
                         f"{r.license:<14}{r.name}")
        return "\n".join(lines)

    __str__ = __repr__


def list_weights(variant=None) -> WeightTable:
    """The weights table, for one variant (any spelling) or all; `*` marks the "imagenet" pick."""
    name = None if variant is None else _variant_name(variant)
    order = {v: i for i, v in enumerate(dict.fromkeys(r.variant for r in table()))}
    rows = [r for r in table() if name in (None, r.variant)]
    return WeightTable(sorted(rows, key=lambda r: (order[r.variant], -(r.top1 or 0), r.tag)))


def is_name(weights: str) -> bool:
    """True when `weights` reads as a tag or a Hub id rather than a file path."""
    if weights.lower().endswith(WEIGHT_EXTENSIONS):
        return False
    return bool(_TAG.fullmatch(weights.lower()) or _HUB_ID.fullmatch(weights))


def resolve(variant, weights: str) -> WeightInfo:
    """The row `weights` names for `variant`: "imagenet", "pycls", "keras", a tag or a Hub id."""
    name = _variant_name(variant)
    known = tags(variant)
    listing = (f"Tags of {name}: {', '.join(known)}" if known else
               f"No weights are published for {name}") + (
        "; or pass weights=None, a file path, or a Hub id like 'timm/regnety_160.swag_ft_in1k'.")
    if weights.lower() == "imagenet":
        info = best(variant)
        if info is None:
            raise ValueError(f"No ImageNet-1k weights under a commercial-use license are published for "
                             f"{name}. {listing}")
        return info
    if _HUB_ID.fullmatch(weights):
        return _hub_row(name, weights, listing)
    tag = weights.lower()
    rows = {r.tag: r for r in table() if r.variant == name}
    info = rows.get(tag) or rows.get(f"{tag}_in1k")
    if info is None:
        elsewhere = sorted({r.variant for r in table() if r.tag in (tag, f"{tag}_in1k")})
        more = f" and {len(elsewhere) - 3} more" if len(elsewhere) > 3 else ""
        where = f" (it exists for {', '.join(elsewhere[:3])}{more})" if elsewhere else ""
        raise ValueError(f"weights={weights!r} is not a tag of {name}{where}. {listing}")
    _announce(info)
    return info


def _hub_row(name, weights, listing):
    repo, _, revision = weights.removeprefix("hf-hub:").partition("@")
    rows = [r for r in table() if r.hub_id == repo]
    if rows and rows[0].variant != name:
        raise ValueError(f"{repo} holds weights for {rows[0].variant}, not {name}: pass "
                         f"variant={rows[0].variant!r}, or choose weights for {name}. {listing}")
    info = rows[0] if rows else WeightInfo(name, repo, repo, "model.safetensors", "main", None, None, 224,
                                           224, None, None, 1000, "torch", "unknown")
    info = dataclasses.replace(info, revision=revision or info.revision)
    _announce(info)
    return info


def _announce(info):
    if not info.commercial and info.hub_id not in _announced:
        _announced.add(info.hub_id)
        note = LICENSE_NOTES.get(info.license, f"license {info.license!r}: check it before use")
        print(f"Note: {info.hub_id} is published under {note}.")


def _cache_dir():
    """The Hugging Face cache as the environment says now (HF_HUB_CACHE, HF_HOME), else the library's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def fetch(info: WeightInfo) -> str:
    """Local path of a Hub row's file: from the Hugging Face cache, else downloaded once (safetensors only)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    if not info.file.endswith(".safetensors"):
        raise ValueError(f"{info.hub_id}: {info.file} is not a safetensors file; the workbench downloads "
                         f"safetensors only, never pickled checkpoints.")
    where = dict(repo_id=info.hub_id, filename=info.file, revision=info.revision, cache_dir=_cache_dir())
    try:
        return hf_hub_download(**where, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    reason = ("HF_HUB_OFFLINE is set" if _offline() else
              None if reachable(endpoint) else f"{endpoint} cannot be reached")
    if reason is None:
        try:
            return hf_hub_download(**where, endpoint=endpoint)
        except RepositoryNotFoundError:
            raise ValueError(f"There is no Hub repository {info.hub_id!r} at {endpoint}: check the id, or "
                             f"pick a tag of {info.variant} (wb.list_weights({info.variant!r}))."
                             ) from None
        except LocalEntryNotFoundError as e:
            reason = f"the download failed ({_first_line(e)})"
        except EntryNotFoundError:
            raise ValueError(f"{info.hub_id} has no {info.file} (revision {info.revision}): the workbench "
                             f"downloads safetensors only, never pickled checkpoints; convert the weights "
                             f"to {info.file} or pass a local file.") from None
        except _download_errors() as e:  # network and HTTP errors, a short read
            reason = f"the download failed ({_first_line(e)})"
    raise WeightsUnavailableError(
        f"Cannot get {info.file} of {info.hub_id} (revision {info.revision}): {reason}; supply it as "
        f"weights='/path/to/{info.file}' (downloaded where there is network), or fill the Hugging Face "
        f"cache ({_cache_dir() or constants.HF_HUB_CACHE}) on a machine that has network, or set "
        f"HF_ENDPOINT to a mirror.")


def _download_errors() -> tuple:
    """What a failed transfer raises: OSError, and httpx's HTTPError in huggingface_hub 1.0 and later."""
    errors = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except ImportError:
            pass
    return tuple(errors)


def _first_line(error) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
