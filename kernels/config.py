"""Preprocessing semantics shared by the kernels, training and serving.

The weights' ``config.json`` records a PreprocessConfig so that training and serving always
agree (DESIGN.md, domain rules). Change semantics only here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class PreprocessConfig:
    """How HU slices become model input.

    Attributes:
        normalisation: "minmax" = the DINO-LG paper (§4.1): per-slice min-max of HU to [0, 1], then
            2x − 1. "window" = clip to ``window_hu`` and map linearly to [-1, 1] (robust to metal and
            to out-of-field padding values, which dominate a per-slice min-max).
        window_hu: (low, high) HU of the fixed window; ignored for "minmax".
        input_size: square side of the model input; slices are resized bilinearly.
        output_dtype: float16 halves host→device traffic; float32 for CPU backends.
        calcium_threshold_hu: voxels at or above count as calcium candidates (slice pre-filter).
        body_threshold_hu: voxels above this are "inside the body" for the candidate count: a
            candidate is a voxel >= calcium_threshold_hu whose four edge neighbours are all
            > body_threshold_hu (coronary calcium sits in fat or vessel wall, never next to air
            or lung); voxels on the slice border never count. Counted at full resolution.
        antialias: how the bilinear resize samples (half-pixel centres either way, i.e. torch
            ``F.interpolate(mode="bilinear", align_corners=False, antialias=...)``). True: the
            triangle filter widens with the down-sampling factor (PIL / torchvision Resize), so a
            1-pixel calcification always reaches the model input (about 5-17 % of its contrast
            at 512→224) and noise is averaged; False: 2×2 taps, about 23 % of the source pixels
            are never sampled at 512→224 and a 1-pixel calcification vanishes ~29 % of the time,
            depending only on where it falls on the sampling grid.
    """

    normalisation: Literal["minmax", "window"] = "minmax"
    window_hu: tuple[float, float] = (-1024.0, 3071.0)
    input_size: int = 224
    output_dtype: Literal["float16", "float32"] = "float32"
    calcium_threshold_hu: float = 130.0
    body_threshold_hu: float = -500.0
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.normalisation not in ("minmax", "window"):
            raise ValueError(f"normalisation must be 'minmax' or 'window', got {self.normalisation!r}")
        if self.window_hu[1] <= self.window_hu[0]:
            raise ValueError(f"window_hu must be (low, high) with high > low, got {self.window_hu}")
        if self.input_size < 8:
            raise ValueError(f"input_size must be >= 8, got {self.input_size}")
        if not isinstance(self.antialias, bool):
            raise ValueError(f"antialias must be a bool, got {self.antialias!r}")
        if self.output_dtype not in ("float16", "float32"):
            raise ValueError(f"output_dtype must be float16 or float32, got {self.output_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["window_hu"] = list(self.window_hu)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; known: {sorted(known)}")
        kw = dict(d)
        if "window_hu" in kw:
            kw["window_hu"] = tuple(float(v) for v in kw["window_hu"])
        return cls(**kw)
