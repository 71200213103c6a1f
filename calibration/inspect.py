"""``calibrate inspect SET``: what a calibration set covers, what it misses, and what it makes the models do.

Written next to the set, in ``SET/inspect/``:

* ``coverage.json`` / ``coverage.md``: per axis (filter outcome, scanner | kVp | thickness, HU bin) and
  per stratum, slices in the set against the population it was drawn from, with the gaps named:
  ``missing`` (the population has slices there, the set none) and ``few`` (fewer than ``min_per_stratum``);
* ``inputs.png``: histograms of the model inputs per role, and of the slice max HU (set vs population);
* ``activations_<role>.json`` / ``.png``: per-layer activation ranges (min / max / percentiles of every
  node output, ONNX Runtime with the outputs exposed) over the set, for the FP32 model of the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cacstream.calibration.sets import ROLES, CalibrationSet

DEFAULT_MIN_PER_STRATUM = 5


@dataclass
class CoverageRow:
    axis: str  # "filter" | "scanner" | "hu" | "stratum"
    label: str
    population: int
    in_set: int
    status: str  # "ok" | "few" | "missing"

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "label": self.label,
            "population": self.population,
            "in_set": self.in_set,
            "status": self.status,
        }


@dataclass
class Coverage:
    set_id: str
    n_set: int
    n_population: int
    rows: list[CoverageRow]
    hu: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def gaps(self) -> list[CoverageRow]:
        return [r for r in self.rows if r.status != "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "set_id": self.set_id,
            "n_set": self.n_set,
            "n_population": self.n_population,
            "rows": [r.to_dict() for r in self.rows],
            "hu": self.hu,
            "notes": self.notes,
            "gaps": [r.to_dict() for r in self.gaps],
        }


def _status(pop: int, got: int, min_per: int) -> str:
    if pop > 0 and got == 0:
        return "missing"
    if got < min(min_per, pop):
        return "few"
    return "ok"


def coverage(cs: CalibrationSet, min_per_stratum: int = DEFAULT_MIN_PER_STRATUM) -> Coverage:
    """Set vs population along every axis and stratum (population counts come from the manifest)."""
    pop = cs.manifest.get("population", {})
    set_axes: dict[str, dict[str, int]] = {}
    for s in cs.slices:
        for axis, lab in s.strata.items():
            set_axes.setdefault(axis, {}).setdefault(lab, 0)
            set_axes[axis][lab] += 1
    rows: list[CoverageRow] = []
    pop_axes: dict[str, dict[str, int]] = pop.get("axes", {})
    for axis in sorted(set(pop_axes) | set(set_axes)):
        labels = sorted(set(pop_axes.get(axis, {})) | set(set_axes.get(axis, {})))
        for lab in labels:
            p = int(pop_axes.get(axis, {}).get(lab, 0))
            g = int(set_axes.get(axis, {}).get(lab, 0))
            rows.append(CoverageRow(axis, lab, p, g, _status(p, g, min_per_stratum)))
    set_strata: dict[str, int] = {}
    for s in cs.slices:
        set_strata[s.stratum] = set_strata.get(s.stratum, 0) + 1
    pop_strata: dict[str, int] = pop.get("strata", {})
    for lab in sorted(set(pop_strata) | set(set_strata)):
        p, g = int(pop_strata.get(lab, 0)), int(set_strata.get(lab, 0))
        rows.append(CoverageRow("stratum", lab, p, g, _status(p, g, min_per_stratum)))
    hu_max = np.array([float(s.stats.get("hu_max", np.nan)) for s in cs.slices])
    hu_min = np.array([float(s.stats.get("hu_min", np.nan)) for s in cs.slices])
    hu = {
        "slice_max_hu_min": float(np.nanmin(hu_max)),
        "slice_max_hu_median": float(np.nanmedian(hu_max)),
        "slice_max_hu_max": float(np.nanmax(hu_max)),
        "slice_min_hu_min": float(np.nanmin(hu_min)),
    }
    notes = []
    axes_used = cs.strategy.get("axes", [])
    if "filter" in pop_axes and not set_axes.get("filter", {}).get("flagged"):
        notes.append(
            "no slice the FP32 filter flags: the calibration never sees calcium-positive activations"
        )
    truth = [s.stats.get("truth_calcium") for s in cs.slices]
    if any(t is not None for t in truth):
        notes.append(
            f"{sum(bool(t) for t in truth)} of {len(truth)} slices hold coronary calcium (phantom truth)"
        )
    if not axes_used:
        notes.append("random strategy: strata are shown for information, the choice did not use them")
    return Coverage(cs.set_id, len(cs), int(pop.get("slices", 0)), rows, hu, notes)


def coverage_markdown(cov: Coverage, cs: CalibrationSet) -> str:
    lines = [
        f"# Calibration set {cov.set_id}",
        "",
        f"- strategy: {cs.strategy.get('name')} (axes: {', '.join(cs.strategy.get('axes', [])) or 'none'}, "
        f"allocation {cs.strategy.get('allocation')}), seed {cs.seed}, version {cs.manifest.get('version')}",
        f"- weights: {cs.weights_id}; slices: {cov.n_set} of a population of {cov.n_population}",
        f"- slice max HU in the set: {cov.hu['slice_max_hu_min']:.0f} .. {cov.hu['slice_max_hu_max']:.0f} "
        f"(median {cov.hu['slice_max_hu_median']:.0f})",
        "",
    ]
    for note in cov.notes:
        lines.append(f"- note: {note}")
    lines += ["", "| axis | label | population | in set | status |", "|---|---|---:|---:|---|"]
    for r in cov.rows:
        lines.append(f"| {r.axis} | {r.label} | {r.population} | {r.in_set} | {r.status} |")
    gaps = cov.gaps
    lines += ["", f"## Gaps ({len(gaps)})", ""]
    lines += [
        f"- {r.axis} `{r.label}`: {r.in_set} in the set, {r.population} in the population ({r.status})"
        for r in gaps
    ] or ["- none"]
    return "\n".join(lines) + "\n"


def print_coverage(cov: Coverage, cs: CalibrationSet) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    t = Table(
        title=f"{cov.set_id}: {cov.n_set} slices of {cov.n_population} "
        f"(strategy {cs.strategy.get('name')}, seed {cs.seed})"
    )
    for col, just in (
        ("axis", "left"),
        ("label", "left"),
        ("population", "right"),
        ("in set", "right"),
        ("share", "right"),
        ("status", "left"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    style = {"ok": "green", "few": "yellow", "missing": "bold red"}
    for r in cov.rows:
        share = f"{100 * r.in_set / cov.n_set:.1f}%" if cov.n_set else "-"
        t.add_row(
            r.axis, r.label, str(r.population), str(r.in_set), share, f"[{style[r.status]}]{r.status}[/]"
        )
    console.print(t)
    console.print(
        f"slice max HU in the set: {cov.hu['slice_max_hu_min']:.0f} .. {cov.hu['slice_max_hu_max']:.0f}"
    )
    for note in cov.notes:
        console.print(f"[cyan]note:[/] {note}")
    if cov.gaps:
        console.print(
            f"[yellow]{len(cov.gaps)} gap(s): "
            + "; ".join(f"{r.axis} {r.label} ({r.status})" for r in cov.gaps[:8])
            + "[/]"
        )


def input_histograms(sets: dict[str, CalibrationSet], path: Path) -> Path:
    """One panel per role with the model-input histogram of each set, plus slice max HU (set vs population)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ROLES) + 1, figsize=(5.2 * (len(ROLES) + 1), 4.0))
    bins = np.linspace(-1.0, 1.0, 101)
    for ax, role in zip(axes, ROLES):
        for label, cs in sets.items():
            x = np.asarray(cs.inputs[role], dtype=np.float32).reshape(-1)
            ax.hist(x, bins=bins, histtype="step", density=True, linewidth=1.3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel(f"{role} model input value (preprocessed, [-1, 1])")
        ax.set_ylabel("density")
        ax.set_title(f"{role} inputs")
        ax.legend(fontsize=8)
    ax = axes[-1]
    for label, cs in sets.items():
        h = cs.manifest.get("population", {}).get("hu_max_hist")
        vals = np.array([float(s.stats["hu_max"]) for s in cs.slices])
        if h:
            edges = np.asarray(h["edges"])
            ax.hist(
                np.clip(vals, edges[0], edges[-1]),
                bins=edges,
                histtype="step",
                density=True,
                linewidth=1.3,
                label=f"{label}: set",
            )
            if len(sets) == 1:
                counts = np.asarray(h["counts"], dtype=float)
                widths = np.diff(edges)
                dens = counts / max(1.0, counts.sum()) / widths
                ax.stairs(dens, edges, linestyle="--", label=f"{label}: population")
    used = [float(s.stats["hu_max"]) for cs in sets.values() for s in cs.slices]
    if used:
        ax.set_xlim(min(used) - 150.0, max(used) + 150.0)
    ax.set_xlabel("slice max HU")
    ax.set_ylabel("density")
    ax.set_title("slice max HU: set vs population")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def resolve_weights(cs: CalibrationSet, weights: Path | None) -> Path:
    w = Path(weights) if weights is not None else Path(str(cs.manifest.get("weights_dir", "")))
    if not (w / "config.json").is_file():
        raise FileNotFoundError(
            f"{w}: no weights folder (config.json) for the activation ranges; pass --weights DIR "
            f"(the set was built for weights {cs.weights_id!r})"
        )
    return w


def check_preprocess_matches(cs: CalibrationSet, weights_dir: Path) -> None:
    """The set's inputs are only meaningful for models that preprocess the same way."""
    from cacstream.engine.inference.weights_spec import read_weights_spec

    spec = read_weights_spec(weights_dir)
    for role in ROLES:
        want = spec.model(role).preprocess.to_dict()
        got = cs.preprocess(role).to_dict()
        want.pop("output_dtype", None)
        got.pop("output_dtype", None)
        if want != got:
            diff = {k: (got.get(k), want.get(k)) for k in want if got.get(k) != want.get(k)}
            raise ValueError(
                f"{cs.directory}: the set was preprocessed for {role} with {diff} (set, weights) — it "
                f"does not fit {weights_dir}; build a set for these weights"
            )


def role_activations(
    cs: CalibrationSet, weights_dir: Path, role: str, progress: Any = None, max_slices: int | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """Activation ranges of the FP32 model of ``role`` over the set, cached in SET/inspect/ by ONNX hash."""
    from cacstream.calibration.activations import activation_ranges, load_ranges, save_ranges
    from cacstream.engine.file_hash import file_sha256
    from cacstream.engine.inference.weights_spec import read_weights_spec

    onnx_path = read_weights_spec(weights_dir).model(role).onnx_path("fp32")
    sha = file_sha256(onnx_path)
    cache = cs.inspect_dir / f"activations_{role}.json"
    n = len(cs) if max_slices is None else min(len(cs), max_slices)
    if cache.is_file():
        ranges, meta = load_ranges(cache)
        if meta.get("onnx_sha256") == sha and meta.get("set_id") == cs.set_id and meta.get("slices") == n:
            return ranges, meta
    size = int(cs.inputs[role].shape[-1])
    # a 512² U-Net's exposed intermediate tensors take ~0.5 GB per slice: small batches keep memory flat
    ranges = activation_ranges(onnx_path, cs.inputs[role][:n], batch_size=2 if size >= 384 else 8, progress=progress)
    meta = {"set_id": cs.set_id, "role": role, "onnx": str(onnx_path), "onnx_sha256": sha, "slices": n}
    save_ranges(cache, ranges, meta)
    return ranges, meta


def inspect_set(
    cs: CalibrationSet,
    *,
    weights: Path | None = None,
    activations: bool = True,
    min_per_stratum: int = DEFAULT_MIN_PER_STRATUM,
    quiet: bool = False,
    max_slices: int | None = None,
) -> dict[str, Any]:
    """Write SET/inspect/* and return a summary (paths, gaps)."""
    from cacstream.calibration.activations import plot_ranges
    from cacstream.calibration.progress import progress_bar

    out = cs.inspect_dir
    out.mkdir(parents=True, exist_ok=True)
    cov = coverage(cs, min_per_stratum)
    (out / "coverage.json").write_text(json.dumps(cov.to_dict(), indent=1) + "\n")
    (out / "coverage.md").write_text(coverage_markdown(cov, cs))
    if not quiet:
        print_coverage(cov, cs)
    files = {
        "coverage_json": out / "coverage.json",
        "coverage_md": out / "coverage.md",
        "inputs_png": input_histograms({cs.name: cs}, out / "inputs.png"),
    }
    layers: dict[str, int] = {}
    if activations:
        w = resolve_weights(cs, weights)
        check_preprocess_matches(cs, w)
        with progress_bar(quiet) as bar:
            for role in ROLES:
                ranges, _ = role_activations(cs, w, role, bar, max_slices)
                layers[role] = len(ranges)
                files[f"activations_{role}_json"] = out / f"activations_{role}.json"
                files[f"activations_{role}_png"] = plot_ranges(
                    {cs.name: ranges},
                    out / f"activations_{role}.png",
                    f"{role}: activation ranges over {cs.set_id}",
                )
    return {"coverage": cov, "files": {k: str(v) for k, v in files.items()}, "layers": layers}
