"""Which slices go into a calibration set: strata, allocation and seeded sampling (no I/O here).

INT8 ranges are set by what the calibration slices make the network do. A set drawn at random from
chest CTs is mostly lung and abdomen slices without calcium, so the activations that decide the hard
cases (a small plaque, a slice whose filter probability sits at the threshold, a scanner whose noise
texture is different) are barely represented. Stratifying by what matters and allocating evenly
across strata (``balanced``) fixes that; ``proportional`` reproduces the population's mix.

Axes (each slice gets one label per axis; its stratum is the labels joined with " / "):

* ``filter``: the FP32 slice filter's outcome: ``flagged`` (p >= threshold + band), ``near_threshold``
  (|p - threshold| < band), ``not_flagged``.
* ``scanner``: ``<manufacturer> <model> | <kVp> kV | <thickness> mm`` from AcquisitionInfo / Geometry.
* ``hu``: percentile bin of the slice's max HU over the population (``q1`` lowest .. ``qK``), and
  whether the kernels found calcium candidates on it (``calc`` / ``no_calc``), e.g. ``max_q4 calc``.
* ``random`` (no axis): one stratum, uniform sampling.

Everything is deterministic given the seed and the population order (sorted by series UID, slice index).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

AXES: tuple[str, ...] = ("filter", "scanner", "hu")
#: Named strategies -> axes. "stratified" is the recommended default: all three axes.
STRATEGIES: dict[str, tuple[str, ...]] = {
    "stratified": AXES,
    "filter": ("filter",),
    "scanner": ("scanner",),
    "hu": ("hu",),
    "random": (),
}
Allocation = Literal["balanced", "proportional"]


@dataclass(frozen=True)
class SelectionConfig:
    """How to choose ``n`` slices.

    Attributes:
        n: slices in the set (capped at the population size).
        strategy: a key of :data:`STRATEGIES`, or axes joined with "+" (e.g. "filter+scanner").
        seed: every random choice comes from it.
        allocation: "balanced" (equal share per non-empty stratum, the remainder passed on to strata
            that still have slices) or "proportional" (share of the population, largest remainders).
        near_band: half-width of the "near_threshold" filter stratum, in probability.
        hu_bins: number of percentile bins of the slice max HU.
    """

    n: int = 256
    strategy: str = "stratified"
    seed: int = 0
    allocation: Allocation = "balanced"
    near_band: float = 0.1
    hu_bins: int = 4

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        axes_of(self.strategy)  # validates
        if self.allocation not in ("balanced", "proportional"):
            raise ValueError(f"allocation must be balanced or proportional, got {self.allocation!r}")
        if not 0.0 <= self.near_band < 0.5:
            raise ValueError(f"near_band must be within [0, 0.5), got {self.near_band}")
        if not 1 <= self.hu_bins <= 20:
            raise ValueError(f"hu_bins must be within 1..20, got {self.hu_bins}")

    @property
    def axes(self) -> tuple[str, ...]:
        return axes_of(self.strategy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.strategy,
            "axes": list(self.axes),
            "n": self.n,
            "allocation": self.allocation,
            "near_band": self.near_band,
            "hu_bins": self.hu_bins,
        }


def axes_of(strategy: str) -> tuple[str, ...]:
    """Axes of a strategy name ("stratified", "random", "filter+hu", ...)."""
    if strategy in STRATEGIES:
        return STRATEGIES[strategy]
    parts = tuple(p for p in strategy.split("+") if p)
    bad = [p for p in parts if p not in AXES]
    if not parts or bad:
        raise ValueError(
            f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)} or axes joined with '+' "
            f"({', '.join(AXES)})"
        )
    return tuple(a for a in AXES if a in parts)  # canonical order


@dataclass(frozen=True)
class Candidate:
    """One slice of the population with the facts the strata are made from."""

    series_instance_uid: str
    slice_index: int
    hu_max: float
    calcium_count: int
    manufacturer: str = ""
    model: str = ""
    kvp: float | None = None
    thickness_mm: float | None = None
    filter_probability: float | None = None


def filter_label(p: float | None, threshold: float, band: float) -> str:
    if p is None:
        raise ValueError("the filter axis needs the slice filter's probability of every slice")
    if abs(p - threshold) < band:
        return "near_threshold"
    return "flagged" if p >= threshold else "not_flagged"


def scanner_label(c: Candidate) -> str:
    who = " ".join(x for x in (c.manufacturer.strip(), c.model.strip()) if x) or "unknown scanner"
    kv = f"{c.kvp:g} kV" if c.kvp is not None else "? kV"
    th = f"{c.thickness_mm:g} mm" if c.thickness_mm is not None else "? mm"
    return f"{who} | {kv} | {th}"


def hu_edges(hu_max: np.ndarray, bins: int) -> np.ndarray:
    """Inner edges of ``bins`` percentile bins of the slice max HU (len bins - 1)."""
    if bins <= 1 or hu_max.size == 0:
        return np.zeros(0)
    return np.percentile(hu_max, np.linspace(0, 100, bins + 1)[1:-1])


def hu_label(hu_max: float, calcium_count: int, edges: np.ndarray) -> str:
    q = int(np.searchsorted(edges, hu_max, side="right")) + 1
    return f"max_q{q} {'calc' if calcium_count > 0 else 'no_calc'}"


def label_population(
    cands: list[Candidate], config: SelectionConfig, threshold: float | None
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Per candidate {axis: label} for every axis (the ones the strategy does not use too, when the
    facts are there, so that inspect can show coverage along every axis), plus the binning used."""
    edges = hu_edges(np.array([c.hu_max for c in cands], dtype=np.float64), config.hu_bins)
    have_p = threshold is not None and all(c.filter_probability is not None for c in cands)
    if "filter" in config.axes and not have_p:
        raise ValueError("strategy uses the filter axis but filter probabilities are missing")
    out = []
    for c in cands:
        lab = {"scanner": scanner_label(c), "hu": hu_label(c.hu_max, c.calcium_count, edges)}
        if have_p:
            lab["filter"] = filter_label(c.filter_probability, float(threshold), config.near_band)  # type: ignore[arg-type]
        out.append(lab)
    return out, {
        "hu_max_edges": [float(e) for e in edges],
        "filter_threshold": threshold,
        "near_band": config.near_band,
    }


def stratum_of(labels: dict[str, str], axes: tuple[str, ...]) -> str:
    return " / ".join(labels[a] for a in axes) if axes else "all"


def allocate(sizes: dict[str, int], n: int, allocation: Allocation) -> dict[str, int]:
    """Slices to draw per stratum: sums to min(n, population), never more than a stratum holds."""
    total = sum(sizes.values())
    n = min(n, total)
    keys = sorted(k for k, v in sizes.items() if v > 0)
    take = dict.fromkeys(sizes, 0)
    if n == 0 or not keys:
        return take
    if allocation == "proportional":
        quotas = {k: n * sizes[k] / total for k in keys}
        for k in keys:
            take[k] = min(sizes[k], int(np.floor(quotas[k])))
        rest = n - sum(take.values())
        order = sorted(keys, key=lambda k: (-(quotas[k] - np.floor(quotas[k])), k))
        while rest > 0:
            progressed = False
            for k in order:
                if rest and take[k] < sizes[k]:
                    take[k] += 1
                    rest -= 1
                    progressed = True
            if not progressed:
                break
        return take
    # balanced: water-filling — every stratum gets min(size, L) for the highest level L that fits, and the
    # remainder goes one each to the (name-ordered) strata that still have slices: no stratum with slices
    # left ends more than one below another
    lo, hi = 0, max(sizes[k] for k in keys)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(sizes[k], mid) for k in keys) <= n:
            lo = mid
        else:
            hi = mid - 1
    for k in keys:
        take[k] = min(sizes[k], lo)
    rest = n - sum(take.values())
    for k in keys:
        if rest == 0:
            break
        if sizes[k] > lo:
            take[k] += 1
            rest -= 1
    return take


def _stratum_rng(seed: int, stratum: str) -> np.random.Generator:
    """A generator per stratum, so adding a stratum never changes what another one draws."""
    digest = int.from_bytes(hashlib.sha256(stratum.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), digest]))


@dataclass(frozen=True)
class Selection:
    indices: list[int]  # into the population, ascending
    strata: list[str]  # stratum of each selected slice
    labels: list[dict[str, str]]  # per population slice, all axes
    population_strata: dict[str, int]
    allocation: dict[str, int]
    binning: dict[str, Any]


def select_slices(
    cands: list[Candidate], config: SelectionConfig, threshold: float | None = None
) -> Selection:
    """Choose the set's slices from the population (in the order given; keep that order stable)."""
    if not cands:
        raise ValueError("no slices to choose from (the sources hold no eligible series)")
    labels, binning = label_population(cands, config, threshold)
    axes = config.axes
    members: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        members.setdefault(stratum_of(lab, axes), []).append(i)
    sizes = {k: len(v) for k, v in members.items()}
    take = allocate(sizes, config.n, config.allocation)
    chosen: list[tuple[int, str]] = []
    for k in sorted(members):
        if take[k] == 0:
            continue
        pick = _stratum_rng(config.seed, k).choice(len(members[k]), size=take[k], replace=False)
        chosen.extend((members[k][j], k) for j in sorted(pick.tolist()))
    chosen.sort()
    return Selection(
        [i for i, _ in chosen],
        [k for _, k in chosen],
        labels,
        dict(sorted(sizes.items())),
        {k: take[k] for k in sorted(take)},
        binning,
    )


def axis_counts(labels: list[dict[str, str]], indices: list[int] | None = None) -> dict[str, dict[str, int]]:
    """Per axis, how many slices carry each label (of all, or of ``indices``)."""
    rows = labels if indices is None else [labels[i] for i in indices]
    out: dict[str, Counter[str]] = {}
    for lab in rows:
        for axis, v in lab.items():
            out.setdefault(axis, Counter())[v] += 1
    return {a: dict(sorted(c.items())) for a, c in sorted(out.items())}
