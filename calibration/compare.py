"""``calibrate compare SET_A SET_B``: two calibration sets side by side.

* coverage: slices per axis label and per stratum in each set (count and share), so a rebuilt set that
  lost a scanner or the flagged slices shows at once;
* input histograms of both sets overlaid, per model role, plus slice max HU;
* activation ranges per layer of the same FP32 models over both sets, and their ratio: log2 of
  (B's |max| / A's |max|) per tensor. INT8 resolution is range / 255, so +1 means B's calibration would
  make that layer's steps twice as coarse (or A's clip what B keeps), −1 the other way round.

Output (``--out``, default ``SET_A/inspect/compare_<B's id>``): ``compare.md``, ``compare.json``,
``inputs.png``, ``activations_<role>.png``, ``activation_ratio.png``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from cacstream.calibration.sets import ROLES, CalibrationSet


def _counts(cs: CalibrationSet) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {"stratum": {}}
    for s in cs.slices:
        out["stratum"][s.stratum] = out["stratum"].get(s.stratum, 0) + 1
        for axis, lab in s.strata.items():
            out.setdefault(axis, {})
            out[axis][lab] = out[axis].get(lab, 0) + 1
    return out


def coverage_side_by_side(a: CalibrationSet, b: CalibrationSet) -> list[dict[str, Any]]:
    ca, cb = _counts(a), _counts(b)
    rows = []
    for axis in sorted(set(ca) | set(cb), key=lambda x: (x == "stratum", x)):
        for lab in sorted(set(ca.get(axis, {})) | set(cb.get(axis, {}))):
            na, nb = ca.get(axis, {}).get(lab, 0), cb.get(axis, {}).get(lab, 0)
            rows.append(
                {
                    "axis": axis,
                    "label": lab,
                    "a": na,
                    "b": nb,
                    "a_share": na / len(a) if len(a) else 0.0,
                    "b_share": nb / len(b) if len(b) else 0.0,
                    "only_in": "A" if nb == 0 else "B" if na == 0 else "",
                }
            )
    return rows


def activation_differences(ra: list[Any], rb: list[Any]) -> list[dict[str, Any]]:
    """Per tensor present in both: ranges and log2(|max| B / |max| A) (sorted by graph order)."""
    by_b = {r.name: r for r in rb}
    out = []
    for r in sorted(ra, key=lambda t: t.order):
        s = by_b.get(r.name)
        if s is None:
            continue
        ratio = (s.absmax / r.absmax) if r.absmax > 0 and s.absmax > 0 else None
        out.append(
            {
                "tensor": r.name,
                "node": r.node,
                "op_type": r.op_type,
                "order": r.order,
                "a_min": r.min,
                "a_max": r.max,
                "b_min": s.min,
                "b_max": s.max,
                "a_p99_9": r.percentiles.get("p99.9"),
                "b_p99_9": s.percentiles.get("p99.9"),
                "log2_absmax_ratio": None if ratio is None else float(np.log2(ratio)),
            }
        )
    return out


def plot_ratio(diffs: dict[str, list[dict[str, Any]]], path: Path, label_a: str, label_b: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(diffs), 1, figsize=(10, 3.2 * len(diffs)), squeeze=False)
    for ax, (role, rows) in zip(axes[:, 0], diffs.items()):
        vals = [r["log2_absmax_ratio"] if r["log2_absmax_ratio"] is not None else 0.0 for r in rows]
        colours = ["tab:red" if abs(v) >= 1 else "tab:orange" if abs(v) >= 0.5 else "tab:blue" for v in vals]
        ax.bar(np.arange(len(vals)), vals, color=colours)
        ax.axhline(0, color="0.4", linewidth=0.8)
        for lim in (-1, 1):
            ax.axhline(lim, color="tab:red", linestyle="--", linewidth=0.7)
        ax.set_ylabel("log2(|max| B / |max| A)")
        ax.set_title(
            f"{role}: activation range of {label_b} relative to {label_a} (±1 = a factor 2, one INT8 bit)"
        )
        ax.set_xlabel("layer output in graph order")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def compare_sets(
    a: CalibrationSet,
    b: CalibrationSet,
    *,
    out: Path | None = None,
    weights: Path | None = None,
    activations: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    from cacstream.calibration.activations import plot_ranges
    from cacstream.calibration.inspect import (
        check_preprocess_matches,
        input_histograms,
        resolve_weights,
        role_activations,
    )
    from cacstream.calibration.progress import progress_bar

    out = Path(out) if out is not None else a.inspect_dir / f"compare_{_safe(b.set_id)}"
    out.mkdir(parents=True, exist_ok=True)
    label_a, label_b = (f"A {a.name}", f"B {b.name}")
    rows = coverage_side_by_side(a, b)
    files: dict[str, str] = {
        "inputs_png": str(input_histograms({label_a: a, label_b: b}, out / "inputs.png"))
    }
    diffs: dict[str, list[dict[str, Any]]] = {}
    if activations:
        w = resolve_weights(a, weights)
        check_preprocess_matches(a, w)
        check_preprocess_matches(b, w)
        with progress_bar(quiet) as bar:
            for role in ROLES:
                ra, _ = role_activations(a, w, role, bar)
                rb, _ = role_activations(b, w, role, bar)
                diffs[role] = activation_differences(ra, rb)
                files[f"activations_{role}_png"] = str(
                    plot_ranges(
                        {label_a: ra, label_b: rb},
                        out / f"activations_{role}.png",
                        f"{role}: activation ranges, A vs B",
                    )
                )
        files["activation_ratio_png"] = str(plot_ratio(diffs, out / "activation_ratio.png", label_a, label_b))
    summary = {
        "a": {
            "set_id": a.set_id,
            "dir": str(a.directory),
            "n": len(a),
            "strategy": a.strategy,
            "seed": a.seed,
            "weights_id": a.weights_id,
        },
        "b": {
            "set_id": b.set_id,
            "dir": str(b.directory),
            "n": len(b),
            "strategy": b.strategy,
            "seed": b.seed,
            "weights_id": b.weights_id,
        },
        "same_slices": sorted((s.series_instance_uid, s.sop_instance_uid) for s in a.slices)
        == sorted((s.series_instance_uid, s.sop_instance_uid) for s in b.slices),
        "shared_slices": len(
            {(s.series_instance_uid, s.sop_instance_uid) for s in a.slices}
            & {(s.series_instance_uid, s.sop_instance_uid) for s in b.slices}
        ),
        "coverage": rows,
        "activations": diffs,
        "files": files,
    }
    (out / "compare.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "compare.md").write_text(compare_markdown(summary))
    files["compare_md"] = str(out / "compare.md")
    files["compare_json"] = str(out / "compare.json")
    if not quiet:
        print_compare(summary)
    return summary


def compare_markdown(s: dict[str, Any]) -> str:
    a, b = s["a"], s["b"]
    lines = [
        f"# Calibration sets compared: A `{a['set_id']}` vs B `{b['set_id']}`",
        "",
        f"- A: {a['n']} slices, strategy {a['strategy'].get('name')}, seed {a['seed']}, weights {a['weights_id']}",
        f"- B: {b['n']} slices, strategy {b['strategy'].get('name')}, seed {b['seed']}, weights {b['weights_id']}",
        f"- slices in both: {s['shared_slices']}",
        "",
        "## Coverage",
        "",
        "| axis | label | A | A share | B | B share | only in |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in s["coverage"]:
        lines.append(
            f"| {r['axis']} | {r['label']} | {r['a']} | {100 * r['a_share']:.1f} % | {r['b']} | "
            f"{100 * r['b_share']:.1f} % | {r['only_in']} |"
        )
    for role, rows in s["activations"].items():
        big = [r for r in rows if r["log2_absmax_ratio"] is not None and abs(r["log2_absmax_ratio"]) >= 0.5]
        lines += [
            "",
            f"## {role}: layers whose activation range differs by ≥ √2 ({len(big)} of {len(rows)})",
            "",
        ]
        if big:
            lines += ["| layer | op | A min..max | B min..max | log2 ratio |", "|---|---|---|---|---:|"]
            for r in sorted(big, key=lambda r: -abs(r["log2_absmax_ratio"]))[:25]:
                lines.append(
                    f"| {r['node']} | {r['op_type']} | {r['a_min']:.3g} .. {r['a_max']:.3g} | "
                    f"{r['b_min']:.3g} .. {r['b_max']:.3g} | {r['log2_absmax_ratio']:+.2f} |"
                )
        else:
            lines.append("- none")
    lines += ["", "![inputs](inputs.png)"]
    if s["activations"]:
        lines += ["", "![activation ratio](activation_ratio.png)"]
    return "\n".join(lines) + "\n"


def print_compare(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    t = Table(title=f"A {s['a']['set_id']} ({s['a']['n']})  vs  B {s['b']['set_id']} ({s['b']['n']})")
    for col, just in (
        ("axis", "left"),
        ("label", "left"),
        ("A", "right"),
        ("B", "right"),
        ("only in", "left"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in s["coverage"]:
        t.add_row(
            r["axis"],
            r["label"],
            f"{r['a']} ({100 * r['a_share']:.0f}%)",
            f"{r['b']} ({100 * r['b_share']:.0f}%)",
            f"[yellow]{r['only_in']}[/]" if r["only_in"] else "",
        )
    console.print(t)
    for role, rows in s["activations"].items():
        vals = [abs(r["log2_absmax_ratio"]) for r in rows if r["log2_absmax_ratio"] is not None]
        if vals:
            console.print(
                f"{role}: {sum(v >= 1 for v in vals)} of {len(vals)} layers differ by ≥ 2x in range "
                f"(max |log2 ratio| {max(vals):.2f})"
            )
