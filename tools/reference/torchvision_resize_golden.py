"""Golden outputs of torchvision's uint8 BICUBIC antialias resize, the resize qwen-vl-utils
applies to sampled video frames (spec shared/specs/qwen2-vl.md §4.1).

Writes crates/iris-models/tests/data/torchvision_resize.safetensors: for each case
`{name}_{noise|smooth}` a uint8 tensor [H', W', 3] (the resized image), and the case list as JSON
in the metadata key `cases`. The inputs are not stored; both sides generate them from the
formulas below (see crates/iris-models/tests/torchvision_resize.rs).

Run with the reference environment (tools/reference/requirements.txt):
    python tools/reference/torchvision_resize_golden.py
"""
import json
import pathlib

import numpy as np
import torch
from safetensors.numpy import save_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

# (name, H, W, H', W'): downscale, strong downscale (720p-like ratio), upscale, mixed, one axis
CASES = [
    ("down", 90, 160, 56, 84),
    ("down3x", 180, 320, 56, 112),
    ("up", 60, 100, 84, 140),
    ("mixed_odd", 61, 97, 56, 112),
    ("down_h_up_w", 50, 40, 28, 84),
    ("wide_to_square", 33, 200, 56, 56),
    ("tall_to_narrow", 200, 33, 112, 28),
    ("width_only", 45, 80, 45, 56),
    ("height_only", 45, 80, 84, 80),
]


def noise(h, w):
    i = np.arange(h * w * 3, dtype=np.uint64)
    return (((i * np.uint64(1103515245) + np.uint64(12345)) >> np.uint64(16)) & np.uint64(255)).astype(np.uint8).reshape(h, w, 3)


def smooth(h, w):
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((x * 37 + y * 91 + c * 53 + (x * y) % 17) % 256).astype(np.uint8)


def main():
    out = {}
    for name, h, w, oh, ow in CASES:
        for kind, make in (("noise", noise), ("smooth", smooth)):
            frames = torch.from_numpy(make(h, w)).permute(2, 0, 1)[None]  # [T, C, H, W] as qwen-vl-utils
            resized = F.resize(frames, [oh, ow], interpolation=InterpolationMode.BICUBIC, antialias=True)
            out[f"{name}_{kind}"] = resized[0].permute(1, 2, 0).contiguous().numpy()
    path = pathlib.Path(__file__).resolve().parents[2] / "crates/iris-models/tests/data/torchvision_resize.safetensors"
    metadata = {"torch": torch.__version__, "torchvision": __import__("torchvision").__version__, "cases": json.dumps(CASES)}
    save_file(out, str(path), metadata=metadata)
    print(f"wrote {len(out)} cases to {path}")


if __name__ == "__main__":
    main()
