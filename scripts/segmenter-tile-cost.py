"""Time the shipped segmenter on ONNX Runtime (CPU) per whole 512² slice and per region tile, in one run.

Why: the segmentation regions (engine/inference/regions.py) only pay off if a 160² tile costs about its
share of the area; this measures both with the engine's own backends (median of repeats, batch 16).

    python scripts/segmenter-tile-cost.py [--weights engine/weights/default] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from cacstream.engine.inference.runtime import CalciumModels


def _ms_per_item(backend, shape: tuple[int, int, int], batch: int, repeats: int) -> float:
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    backend.infer(x)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        backend.infer(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3 / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=Path("engine/weights/default"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    m = CalciumModels.load(args.weights, backend="onnxruntime", batch_size=args.batch)
    if m.tile_grid is None or m.tile_backend is None:
        raise SystemExit(f"{args.weights}: no region tiles ({'; '.join(m.notes)})")
    whole = _ms_per_item(m.segmenter_backend, m.segmenter_backend.input_shape, args.batch, args.repeats)
    tile = _ms_per_item(m.tile_backend, m.tile_backend.input_shape, args.batch, args.repeats)
    frac = (m.tile_grid.tile / m.tile_grid.served) ** 2
    print(f"whole {m.tile_grid.served}² slice: {whole:.1f} ms; {m.tile_grid.tile}² tile: {tile:.1f} ms "
          f"({tile / whole:.3f} of a slice for {frac:.3f} of its area)")


if __name__ == "__main__":
    main()
