"""Per-layer INT8 sensitivity: which weighted layer's quantisation moves a model's output the most.

Why: on the v1 slice filter, one layer (the ViT's patch embedding, whose input is the windowed CT slice)
caused 93 % of the whole graph's INT8 output error on the calibration set, and entropy calibration of its
input clips the rare bright pixels, which in CT are the calcium the filter looks for. Keeping that one
layer in FP32 cut the filter's largest logit difference on the set from 3.57 to 0.65, and INT8 stayed
1.2x faster than FP32 (docs/calibration.md). Finding such layers by hand is guesswork; measuring them is
cheap:

1. calibrate once (the activation ranges are cached and shared by every graph below);
2. for each weighted layer, quantize that layer alone and run the graph on a few slices of the set;
3. its error is the mean |INT8 − FP32| of the model output, its share that error over the error of
   the fully quantized graph; decision flips are counted too (filter: slice and patch decisions at the
   weights' threshold; segmenter: argmax labels on pixels either graph assigns to an artery).

A layer is kept in FP32 when its share reaches ``share`` (at most ``max_layers`` of them, largest first).
One-at-a-time shares need not sum to 1 (errors interact), so the rule is a screen for dominant layers,
not an error budget; the final graph's agreement with FP32 is measured and recorded separately.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LayerSensitivity:
    """One weighted layer quantized alone: how far the model output moved from FP32."""

    node: str
    op_type: str
    error: float  # mean |output INT8-one-layer − output FP32|
    share: float  # error / error of the graph with every candidate layer quantized
    flips: int  # decisions changed (see module doc)
    decisions: int  # decisions compared

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_error(ref: np.ndarray, out: np.ndarray, role: str, threshold: float | None) -> tuple[float, int, int]:
    """(mean |out − ref|, decisions that differ, decisions compared) for one role's model outputs.

    filter: outputs (N,) or (N, 1 + G²) logits; a decision is logit ≥ logit(threshold), slice and patches.
    segmenter: (N, C, H, W) logits; decisions are argmax labels on pixels either output calls foreground
    (background pixels would swamp the count)."""
    ref = np.asarray(ref, np.float64)
    out = np.asarray(out, np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: {ref.shape} vs {out.shape}")
    err = float(np.mean(np.abs(out - ref)))
    if role == "filter":
        t = 0.0 if threshold is None else float(np.log(threshold / (1.0 - threshold)))
        a, b = ref >= t, out >= t
        return err, int(np.sum(a != b)), int(a.size)
    la, lb = ref.argmax(axis=1), out.argmax(axis=1)
    fg = (la > 0) | (lb > 0)
    return err, int(np.sum(la[fg] != lb[fg])), int(fg.sum())


def rank_layers(
    candidates: Sequence[tuple[str, str]],
    quantize_only: Callable[[list[str] | None], Path],
    run: Callable[[Path], np.ndarray],
    reference: np.ndarray,
    role: str,
    threshold: float | None,
    progress: Callable[[], None] | None = None,
) -> tuple[list[LayerSensitivity], float]:
    """Rank ``candidates`` ((node name, op type), ...) by the output error of quantizing each alone.

    ``quantize_only(nodes)`` writes a Q/DQ graph quantizing just ``nodes`` (None: every candidate) with
    the shared cached ranges and returns its path; ``run(path)`` returns its outputs on the check slices.
    Returns the layers, most sensitive first, and the fully quantized graph's error."""
    full, _, _ = output_error(reference, run(quantize_only(None)), role, threshold)
    ranked = []
    for name, op in candidates:
        err, flips, n = output_error(reference, run(quantize_only([name])), role, threshold)
        ranked.append(LayerSensitivity(name, op, err, err / full if full > 0 else 0.0, flips, n))
        if progress is not None:
            progress()
    ranked.sort(key=lambda s: s.error, reverse=True)
    return ranked, full


def choose_fp32(ranked: Sequence[LayerSensitivity], share: float, max_layers: int) -> list[str]:
    """Layers to keep in FP32: those whose share of the full graph's error is ≥ ``share``, largest first,
    at most ``max_layers``."""
    return [s.node for s in ranked if s.share >= share][: max(0, max_layers)]


def plot_sensitivity(ranked: Sequence[LayerSensitivity], kept: Sequence[str], path: Path, title: str,
                     top: int = 20) -> Path:
    """Bar chart of the ``top`` most sensitive layers' share of the INT8 error; kept-FP32 layers in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(ranked[:top])[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * max(4, len(rows)) + 1.2))
    ax.barh(
        [f"{s.node} ({s.op_type})" for s in rows],
        [100.0 * s.share for s in rows],
        color=["#c0392b" if s.node in kept else "#7f8c8d" for s in rows],
    )
    ax.set_xlabel("output error with only this layer INT8, % of the fully INT8 graph's error")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
