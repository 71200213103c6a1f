"""The three outputs of ``bench pipeline``: JSON (every figure), a markdown table, a PNG plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cacstream.engine.bench.measure import STAGES


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def markdown(f: dict[str, Any]) -> str:
    d = f["device"]
    gpu = ", ".join(g["name"] for g in d.get("gpus", [])) or "no GPU"
    s = f["summary"]
    lines = [
        f"## cacstream bench pipeline{' (short)' if f['short'] else ''}",
        "",
        f"- machine: {d['cpu_model']} ({d['cpu_cores_usable']} usable cores), {gpu}; torch {d.get('torch')}, "
        f"onnxruntime {d.get('onnxruntime')}" + (f", TensorRT {d['tensorrt']}" if d.get("tensorrt") else ""),
        f"- weights `{f['weights_id']}`; {f['source']}; {f['repeats']} repeat(s) after a warm-up; p50 / p95 over "
        f"repeats × series",
        f"- command: `{f['command']}`",
        "",
        "Per-stage p50 in ms per series (each stage timed alone); end to end = the engine's concurrent path "
        "(read → decode threads → batched filter → segment flagged → Agatston → JSON report).",
        "",
        "| backend | precision | batch | "
        + " | ".join(STAGES)
        + " | end to end p50 | p95 | slices/s | series/h | "
        "flagged | volume-wide p50 | model compute saved by filter |",
        "|---|---|---:|" + "---:|" * len(STAGES) + "---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in f["configs"]:
        lines.append(
            f"| {c['backend']} | {c['precision']} | {c['batch_size']} | "
            + " | ".join(f"{c['stages_ms'][st]['p50']:.1f}" for st in STAGES)
            + f" | {c['end_to_end_ms']['p50']:.0f} | {c['end_to_end_ms']['p95']:.0f} | {c['slices_per_s']:.1f} | "
            f"{c['series_per_hour']:.0f} | {_pct(c['flagged_fraction'])} | "
            f"{c['volume_wide']['end_to_end_ms']['p50']:.0f} | {_pct(c['filter_savings']['model_compute_saved'])} |"
        )
    n = f["baselines"]["naive_serial"]
    lines += [
        "",
        "| baseline | end to end p50 ms | p95 ms | slices/s | series/h |",
        "|---|---:|---:|---:|---:|",
        f"| naive serial (pydicom → numpy → PyTorch eager per slice, every slice segmented → scipy.ndimage) | "
        f"{n['end_to_end_ms']['p50']:.0f} | {n['end_to_end_ms']['p95']:.0f} | {n['slices_per_s']:.2f} | "
        f"{n['series_per_hour']:.0f} |",
    ]
    fb = s["fastest"]
    lines += [
        "",
        f"- **end-to-end speedup over the naive baseline: {s['speedup_vs_naive_p50']:.1f}x** (p50; "
        f"{(s['speedup_vs_naive_total'] or 0):.1f}x on the summed per-series medians), fastest configuration: "
        f"{fb['backend']} {fb['precision']} batch {fb['batch_size']}",
        f"- **compute saved by the slice filter vs volume-wide segmentation: {_pct(s['filter_model_compute_saved'])}"
        f"** of model time (filter + segmenter on flagged slices vs segmenter on every slice; paper: about 60 %); "
        f"end to end {_pct(s['filter_end_to_end_saved'])}; slices skipped {_pct(s['slices_skipped'])}",
    ]
    st = f.get("stream")
    if st and "error" not in st:
        lines.append(
            f"- replayed stream ({st['slices']} slices at {st['rate_slices_per_s']:g}/s, {st['backend']} "
            f"{st['precision']}): last slice landed → report published in "
            f"**{st['latency_minus_quiet_s']:.3f} s** (quiet period of {st['quiet_s']:g} s subtracted)"
        )
    elif st:
        lines.append(f"- replayed stream: not measured ({st['error']})")
    for sk in f.get("skipped_configs", []):
        lines.append(f"- skipped {sk['backend']} {sk['precision']}: {sk['reason']}")
    return "\n".join(lines) + "\n"


def plot(f: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cfgs = f["configs"]
    names = [f"{c['backend']}\n{c['precision']} b{c['batch_size']}" for c in cfgs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(12.0, 2.4 * len(cfgs) + 7), 5.2))
    bottom = np.zeros(len(cfgs))
    for st in STAGES:
        vals = np.array([c["stages_ms"][st]["p50"] for c in cfgs])
        a1.bar(names, vals, bottom=bottom, label=st)
        bottom += vals
    a1.set_ylabel("ms per series (p50, stages timed alone)")
    a1.set_title("Per-stage time", fontsize=10)
    a1.legend(fontsize=8)
    labels = names + ["naive\nserial"]
    p50 = [c["end_to_end_ms"]["p50"] for c in cfgs] + [f["baselines"]["naive_serial"]["end_to_end_ms"]["p50"]]
    p95 = [c["end_to_end_ms"]["p95"] for c in cfgs] + [f["baselines"]["naive_serial"]["end_to_end_ms"]["p95"]]
    vw = [c["volume_wide"]["end_to_end_ms"]["p50"] for c in cfgs]
    x = np.arange(len(labels))
    a2.bar(
        x - 0.2,
        p50,
        0.4,
        yerr=np.maximum(0, np.array(p95) - np.array(p50)),
        capsize=3,
        label="end to end p50 (bar: to p95)",
        color=["tab:blue"] * len(cfgs) + ["tab:gray"],
    )
    a2.bar(x[: len(cfgs)] + 0.2, vw, 0.4, label="volume-wide, no slice filter (p50)", color="tab:orange")
    a2.set_xticks(x, labels)
    a2.set_yscale("log")
    a2.set_ylabel("ms per series")
    s = f["summary"]
    a2.set_title(
        f"End to end: fastest {s['speedup_vs_naive_p50']:.1f}x faster than naive serial;\n"
        f"slice filter saves {_pct(s['filter_model_compute_saved'])} of model time vs volume-wide",
        fontsize=10,
    )
    a2.legend(fontsize=8)
    fig.suptitle(
        f"cacstream bench pipeline — {f['device']['cpu_model']}, weights {f['weights_id']}", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(
    figures: dict[str, Any],
    md: str,
    json_path: Path | None,
    md_path: Path | None,
    png_path: Path | None,
    plotter: Callable[[dict[str, Any], Path], Path],
) -> None:
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(figures, indent=1, default=str) + "\n")
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(md)
    if png_path:
        plotter(figures, Path(png_path))
