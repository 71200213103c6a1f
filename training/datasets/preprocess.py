"""HU slices → model input, with the semantics of ``kernels/config.py`` (PreprocessConfig), in torch.

Training must see exactly what serving feeds the models (DESIGN.md), so the steps are the kernels'
steps, in their order:

1. normalise at the native pixel grid: n = (clip(HU, lo, hi) − lo) · inv − 1 with ``minmax``: (lo, hi) =
   the slice's min/max and inv = 2 / ((max − min) + 1e-7) (the paper's §4.1), or ``window``: (lo, hi) =
   ``window_hu`` and inv = 2 / (hi − lo);
2. resize to ``input_size`` bilinearly with half-pixel centres (``align_corners=False``), antialiased or
   not as ``PreprocessConfig.antialias`` says, skipped when the slice already has that size;
3. clip to [-1, 1].

``kernels/reference.py`` is the numpy statement of the same steps; the tests hold this module to it.

Label maps are resized with nearest-neighbour sampling on the same pixel-centre convention.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from cacstream.kernels.config import PreprocessConfig
from torch import Tensor

#: The paper's epsilon in the min-max denominator (§4.1).
MINMAX_EPS = 1e-7


def normalise_hu(hu: Tensor | np.ndarray, cfg: PreprocessConfig) -> Tensor:
    """(..., H, W) HU → float32 in [-1, 1] per slice (the last two axes are one slice)."""
    x = torch.as_tensor(np.asarray(hu) if isinstance(hu, np.ndarray) else hu).to(torch.float32)
    if cfg.normalisation == "minmax":
        lo = x.amin(dim=(-2, -1), keepdim=True)
        hi = x.amax(dim=(-2, -1), keepdim=True)
        inv = 2.0 / ((hi - lo) + MINMAX_EPS)
        return (x - lo) * inv - 1.0
    lo_w, hi_w = float(cfg.window_hu[0]), float(cfg.window_hu[1])
    return (x.clamp(lo_w, hi_w) - lo_w) * (2.0 / (hi_w - lo_w)) - 1.0


def resize_slices(x: Tensor, size: int, antialias: bool = True) -> Tensor:
    """(N, C, H, W) → (N, C, size, size), bilinear, half-pixel centres (the kernels' rule), clipped."""
    if x.shape[-2:] == (size, size):
        return x
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return y.clamp_(-1.0, 1.0)


def resize_labels(labels: Tensor, size: int) -> Tensor:
    """(N, H, W) integer labels → (N, size, size), nearest pixel centre."""
    if labels.shape[-2:] == (size, size):
        return labels
    y = F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest-exact")
    return y[:, 0].to(labels.dtype)


def preprocess_slices(hu: Tensor | np.ndarray, cfg: PreprocessConfig) -> Tensor:
    """(N, H, W) or (H, W) HU → (N, 1, S, S) float32 model input."""
    x = normalise_hu(hu, cfg)
    if x.ndim == 2:
        x = x[None]
    return resize_slices(x[:, None], cfg.input_size, cfg.antialias)
