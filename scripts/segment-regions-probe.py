"""Compare segmentation-region rules on held-out phantoms (the table in docs/models.md).

For every slice the shipped filter flags, the U-Net (PyTorch, the shipped weights) runs either on a grid
of cores of CORE px around the flagged filter patches, with HALO px of context (the engine's
``--segment-regions patches`` rule), or, with ``--full``, on the whole slice as well. Calcium pixels
(>= 130 HU) are counted by label against the phantom truth: right artery, false positive (labelled, truth
background), missed (truth artery, other label).

    python scripts/segment-regions-probe.py --n 6 --core 128 --halo 16 --full
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from cacstream.engine.inference.runtime import CalciumModels
from cacstream.training.evaluate_default import HELDOUT_FIRST, heldout_cases
from cacstream.training.weights import load_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6, help="held-out phantoms (seeds 5000..)")
    ap.add_argument("--core", type=int, default=128, help="core side in served px (a multiple of the 64 px patch)")
    ap.add_argument("--halo", type=int, default=16, help="context around a core, served px")
    ap.add_argument("--full", action="store_true", help="also count the whole-slice rule (slow: PyTorch eager)")
    ap.add_argument("--weights", type=Path, default=Path("engine/weights/default"))
    ap.add_argument("--cache", type=Path, default=Path("runs/heldout-cache"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    bundle = load_weights(args.weights)
    filt, seg = bundle.slice_filter.model.eval(), bundle.segmenter.model.eval()
    m = CalciumModels.load(args.weights, backend="torch")
    lthr = float(np.log(m.filter_threshold / (1 - m.filter_threshold)))
    core, halo = args.core, args.halo
    counts: dict[str, int] = {}
    tiles = flagged = 0
    for case in heldout_cases(HELDOUT_FIRST, args.n, args.cache):
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(m.preprocess(case.hu, "filter")))
            pl = filt.head.patch_logits(filt.features(x)).numpy()
        fl = pl.max(1) >= lthr
        if not fl.any():
            continue
        g = round(pl.shape[1] ** 0.5)
        k, cells = core // (512 // g), 512 // core
        xs = np.asarray(m.preprocess(case.hu[fl], "segmenter"))
        xp = np.pad(xs, ((0, 0), (0, 0), (halo, halo), (halo, halo)))
        crop = np.zeros((len(xs), 512, 512), np.int64)
        plan = [(j, r, c) for j, i in enumerate(np.nonzero(fl)[0])
                for r, c in zip(*np.nonzero((pl[i] >= lthr).reshape(cells, k, cells, k).any(axis=(1, 3))))]
        with torch.no_grad():
            for s in range(0, len(plan), 32):
                part = plan[s:s + 32]
                batch = np.stack([xp[j, :, r * core:r * core + core + 2 * halo, c * core:c * core + core + 2 * halo]
                                  for j, r, c in part])
                for (j, r, c), o in zip(part, seg(torch.as_tensor(batch)).argmax(1).numpy()):
                    crop[j, r * core:(r + 1) * core, c * core:(c + 1) * core] = o[halo:halo + core, halo:halo + core]
        tiles += len(plan)
        flagged += len(xs)
        rules = {"regions": crop}
        if args.full:
            with torch.no_grad():
                rules["whole_slice"] = np.concatenate(
                    [seg(torch.as_tensor(xs[a:a + 8])).argmax(1).numpy() for a in range(0, len(xs), 8)])
        calc, truth = case.hu[fl] >= 130, case.labels[fl]
        for name, lab in rules.items():
            for key, mask in (("right", (lab > 0) & (lab == truth)), ("false_positive", (lab > 0) & (truth == 0)),
                              ("missed", (truth > 0) & (lab != truth))):
                counts[f"{name}_{key}"] = counts.get(f"{name}_{key}", 0) + int((calc & mask).sum())
    area = tiles * (core + 2 * halo) ** 2 / max(flagged, 1) / 512 ** 2
    print(json.dumps({"core": core, "halo": halo, "phantoms": args.n, "flagged_slices": flagged,
                      "tiles_per_flagged_slice": round(tiles / max(flagged, 1), 2), "area_vs_whole_slice": round(area, 2),
                      **counts}))


if __name__ == "__main__":
    main()
