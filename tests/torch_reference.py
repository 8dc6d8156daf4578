"""Reference logits from timm (PyTorch) on random weights, in a process of its own.

    python tests/torch_reference.py OUT_DIR regnety_002 [regnetx_004 ...]
    python tests/torch_reference.py --params regnety_640 [...]   # parameter counts, as JSON


For each architecture, writes into OUT_DIR/<arch>/ the state dict twice (timm
names as .safetensors; pycls names, with the BGR stem pycls trains with, as a
.pyth checkpoint), the input images (raw 0-255 RGB, NHWC) and timm's logits. TensorFlow is never imported here: the two
frameworks are kept in separate processes.
"""
import json
import pathlib
import sys

import numpy as np
import timm
import torch
from safetensors.torch import save_file

PYCLS_NAMES = [  # timm -> pycls parameter names
    ("conv1.conv", "f.a"), ("conv1.bn", "f.a_bn"), ("conv2.conv", "f.b"), ("conv2.bn", "f.b_bn"),
    ("se.fc1", "f.se.f_ex.0"), ("se.fc2", "f.se.f_ex.2"), ("conv3.conv", "f.c"), ("conv3.bn", "f.c_bn"),
    ("downsample.conv", "proj"), ("downsample.bn", "bn"),
]


def reference(arch, out):
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    with torch.no_grad():  # random BN statistics, so that BN import is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.3, 0.7)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"{arch}.safetensors"))
    pycls = {}
    for k, v in state.items():
        for a, b in PYCLS_NAMES:
            k = k.replace(f".{a}.", f".{b}.")
        pycls[k] = v.flip(1) if k == "stem.conv.weight" else v   # pycls stem reads BGR
    torch.save({"epoch": 99, "model_state": pycls}, out / f"{arch}.pyth")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 160, 160, 3)).astype(np.float32)
    mean, std = np.array(model.pretrained_cfg["mean"]), np.array(model.pretrained_cfg["std"])
    x = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    np.save(out / "images.npy", images)
    np.save(out / "logits.npy", logits)


def parameter_counts(archs):
    """timm's parameter count of each architecture, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        return {a: sum(p.numel() for p in timm.create_model(a).parameters()) for a in archs}


if __name__ == "__main__":
    if sys.argv[1] == "--params":
        print(json.dumps(parameter_counts(sys.argv[2:])))
    else:
        for name in sys.argv[2:]:
            reference(name, pathlib.Path(sys.argv[1]) / name)
