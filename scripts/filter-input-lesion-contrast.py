"""How much of a calcification survives the slice filter's input resampling (docs/models.md).

For every calcified slice of the cached phantoms: the lesion's peak HU at full resolution, after the
v0 filter's antialiased bilinear resize 512² → 224², and after the v1 filter's 4×4 max-pool → 128².
A lesion whose peak falls below 130 HU after resampling no longer looks like calcium to the filter,
which caps its sensitivity however well it is trained.

    python scripts/filter-input-lesion-contrast.py runs/phantom-cache --cases 60
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", type=Path, help="a phantom cache folder (phantom-*/hu.npy, labels.npy, case.json)")
    ap.add_argument("--cases", type=int, default=60, help="how many cached phantoms to read (first N by name)")
    args = ap.parse_args()
    rows: dict[str, list[tuple[float, float, float]]] = {"gated": [], "chest": []}
    for d in sorted(args.cache.glob("phantom-*"))[: args.cases]:
        hu = np.load(d / "hu.npy", mmap_mode="r")
        lab = np.load(d / "labels.npy", mmap_mode="r")
        spacing = json.loads((d / "case.json").read_text())["pixel_spacing_mm"][0]
        z = np.flatnonzero(np.asarray(lab).reshape(len(lab), -1).max(1) > 0)
        if not len(z) or hu.shape[1:] != (512, 512):
            continue
        x = torch.from_numpy(np.asarray(hu[z], dtype=np.float32))[:, None]
        m = torch.from_numpy(np.asarray(lab[z]) > 0)[:, None].float()
        bil = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        bil_m = F.interpolate(m, size=(224, 224), mode="bilinear", align_corners=False, antialias=True) > 0
        mp, mp_m = F.max_pool2d(x, 4), F.max_pool2d(m, 4) > 0
        for i in range(len(z)):
            rows["gated" if spacing < 0.5 else "chest"].append(
                (float(x[i][m[i] > 0].max()), float(bil[i][bil_m[i]].max()), float(mp[i][mp_m[i]].max()))
            )
    print("| phantoms | calcified slices | peak < 130 HU at 224² bilinear | peak < 200 HU at 224² | peak < 130 HU at 4x4 max-pool |")
    print("|---|---:|---:|---:|---:|")
    for kind, r in rows.items():
        a = np.array(r)
        if len(a):
            print(f"| {kind} | {len(a)} | {np.mean(a[:, 1] < 130):.1%} | {np.mean(a[:, 1] < 200):.1%} | {np.mean(a[:, 2] < 130):.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
