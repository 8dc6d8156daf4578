"""Reference logits from timm (PyTorch) on random weights, in a process of its own.

    python tests/torch_reference.py OUT_DIR regnety_002 [regnetx_004 ...]
    python tests/torch_reference.py OUT_DIR regnetz_b16@224x224,192x256 [...]   # image sizes (default 160x160)
    python tests/torch_reference.py --params regnety_640 [...]   # parameter counts, as JSON


For each architecture, writes into OUT_DIR/<arch>/ the state dict (timm names
as .safetensors; for X and Y also pycls names, with the BGR stem pycls trains
with, as a .pyth checkpoint) and, for each size HxW, the input images
(images_HxW.npy, raw 0-255 RGB, NHWC) and timm's logits (logits_HxW.npy); at
the last size also its feature maps before pooling and logits in float64
(features64_HxW.npy, NHWC, and logits64_HxW.npy). BN statistics are measured
on the first size's images (`perturb`).
TensorFlow is never imported here: the two frameworks are kept in separate
processes.
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


def perturb(model, x):
    """Random BN affine parameters, statistics measured on the batch `x` and then perturbed a little, and
    a head whose logits vary by about 1 between those images: weights under which activations stay in
    range and the output depends on the image, as a trained model's do. (timm's initialization with
    arbitrary BN statistics gives logits that hardly depend on the image, or activations in the
    thousands: random deep nets are that sensitive.)"""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
            m.reset_running_stats()
            m.momentum = None                                    # a plain average over the batches
        model.train()
        model(x)
        model.eval()
        for m in norms:
            m.running_mean.add_(0.02 * m.running_var.sqrt() * torch.randn_like(m.running_mean))
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.9, 1.1))
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        fc = model.get_classifier()
        fc.weight.normal_(0, 1 / (fc.in_features ** 0.5 * features.std(0).mean()))
        fc.bias.copy_(-fc.weight @ features.mean(0))


def images(h, w):
    """Two 0-255 RGB images (NHWC): fine-grained noise, and coarse flat patches."""
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 255, (h, w, 3))
    blocks = rng.uniform(0, 255, (-(-h // 16), -(-w // 16), 3)).repeat(16, 0).repeat(16, 1)[:h, :w]
    return np.stack([noise, blocks]).astype(np.float32)


def reference(arch, out, sizes=((160, 160),)):
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    mean, std = np.array(model.pretrained_cfg["mean"]), np.array(model.pretrained_cfg["std"])
    batches = {(h, w): images(h, w) for h, w in sizes}
    inputs = {size: torch.from_numpy(((x / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
              for size, x in batches.items()}
    perturb(model, inputs[sizes[0]])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"{arch}.safetensors"))
    if not arch.startswith("regnetz"):                     # pycls has no RegNetZ
        pycls = {}
        for k, v in state.items():
            for a, b in PYCLS_NAMES:
                k = k.replace(f".{a}.", f".{b}.")
            pycls[k] = v.flip(1) if k == "stem.conv.weight" else v   # pycls stem reads BGR
        torch.save({"epoch": 99, "model_state": pycls}, out / f"{arch}.pyth")
    for (h, w), x in inputs.items():
        np.save(out / f"images_{h}x{w}.npy", batches[(h, w)])
        with torch.no_grad():
            np.save(out / f"logits_{h}x{w}.npy", model(x).numpy())
    (h, w), x = list(batches.items())[-1]                  # float64: equal up to 1e-12, not float32 rounding
    x = torch.from_numpy(((x.astype(np.float64) / 255.0 - mean) / std).transpose(0, 3, 1, 2))
    with torch.no_grad():
        features = model.double().forward_features(x)
        np.save(out / f"features64_{h}x{w}.npy", features.numpy().transpose(0, 2, 3, 1))
        np.save(out / f"logits64_{h}x{w}.npy", model.forward_head(features).numpy())


def parameter_counts(archs):
    """timm's parameter count of each architecture, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        return {a: sum(p.numel() for p in timm.create_model(a).parameters()) for a in archs}


if __name__ == "__main__":
    if sys.argv[1] == "--params":
        print(json.dumps(parameter_counts(sys.argv[2:])))
    else:
        for spec in sys.argv[2:]:
            name, _, sizes = spec.partition("@")
            sizes = [tuple(int(n) for n in size.split("x")) for size in sizes.split(",")] if sizes else [(160, 160)]
            reference(name, pathlib.Path(sys.argv[1]) / name, sizes)
