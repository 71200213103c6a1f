"""Selection strategies of calibration sets (calibration/select.py): strata, allocation, seeded sampling."""

from __future__ import annotations

import numpy as np
import pytest
from cacstream.calibration.select import (
    Candidate,
    SelectionConfig,
    allocate,
    axes_of,
    filter_label,
    hu_label,
    scanner_label,
    select_slices,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def _population(n_per_series: int = 10) -> list[Candidate]:
    """3 scanners; probabilities spread over [0, 1]; HU max rising along each series."""
    cands = []
    scanners = [
        ("SIEMENS", "Force", 120.0, 3.0),
        ("GE", "Revolution", 100.0, 2.5),
        ("Philips", "iCT", 140.0, 3.0),
    ]
    for s, (man, mod, kv, th) in enumerate(scanners):
        for k in range(n_per_series):
            cands.append(
                Candidate(f"1.2.{s}", k, 100.0 + 150 * k, k % 3, man, mod, kv, th, (k + 0.5) / n_per_series)
            )
    return cands


def test_allocation_balanced_water_fills_by_hand() -> None:
    # 10 slices over strata of 2, 5, 20: equal share 3.33 → a gets all 2, the rest (8) split 4 / 4
    assert allocate({"a": 2, "b": 5, "c": 20}, 10, "balanced") == {"a": 2, "b": 4, "c": 4}
    # b capped at 5 after a second round: 15 → a 2, then 13 split 7/6 → b 5 (cap), c gets the surplus
    assert allocate({"a": 2, "b": 5, "c": 20}, 15, "balanced") == {"a": 2, "b": 5, "c": 8}
    assert allocate({"a": 2, "b": 5, "c": 20}, 100, "balanced") == {"a": 2, "b": 5, "c": 20}
    assert allocate({"a": 0, "b": 3}, 2, "balanced") == {"a": 0, "b": 2}


def test_allocation_proportional_largest_remainder_by_hand() -> None:
    # quotas 10 * (2, 5, 13) / 20 = 1.0, 2.5, 6.5 → floors 1, 2, 6; one left: tie on .5 broken by name (b)
    assert allocate({"a": 2, "b": 5, "c": 13}, 10, "proportional") == {"a": 1, "b": 3, "c": 6}


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 30), min_size=1),
    st.integers(0, 120),
    st.sampled_from(["balanced", "proportional"]),
)
def test_allocation_invariants(sizes: dict[str, int], n: int, how: str) -> None:
    take = allocate(sizes, n, how)  # type: ignore[arg-type]
    assert sum(take.values()) == min(n, sum(sizes.values()))
    assert all(0 <= take[k] <= sizes[k] for k in sizes)
    if how == "balanced":  # no stratum that still has slices gets fewer than one that got more
        open_ = [k for k in sizes if take[k] < sizes[k]]
        assert all(take[j] <= take[k] + 1 for k in open_ for j in sizes)


def test_labels() -> None:
    assert filter_label(0.55, 0.5, 0.1) == "near_threshold"
    assert filter_label(0.61, 0.5, 0.1) == "flagged"
    assert filter_label(0.39, 0.5, 0.1) == "not_flagged"
    assert filter_label(0.5, 0.5, 0.0) == "flagged"  # p >= threshold flags, as the engine does
    with pytest.raises(ValueError):
        filter_label(None, 0.5, 0.1)
    assert (
        scanner_label(Candidate("u", 0, 1, 0, "GE", "Revolution", 120.0, 2.5))
        == "GE Revolution | 120 kV | 2.5 mm"
    )
    assert scanner_label(Candidate("u", 0, 1, 0)) == "unknown scanner | ? kV | ? mm"
    edges = np.array([100.0, 200.0, 300.0])
    assert hu_label(50, 0, edges) == "max_q1 no_calc"
    assert hu_label(100, 3, edges) == "max_q2 calc"  # an edge belongs to the upper bin
    assert hu_label(1000, 1, edges) == "max_q4 calc"


def test_strategy_names() -> None:
    assert axes_of("stratified") == ("filter", "scanner", "hu")
    assert axes_of("random") == ()
    assert axes_of("hu+filter") == ("filter", "hu")
    for bad in ("magic", "filter+nope", ""):
        with pytest.raises(ValueError, match="unknown strategy"):
            SelectionConfig(strategy=bad)


def test_selection_is_deterministic_and_covers_every_stratum() -> None:
    cands = _population()
    cfg = SelectionConfig(n=12, strategy="filter+scanner", seed=3, near_band=0.1)
    a = select_slices(cands, cfg, threshold=0.5)
    b = select_slices(cands, cfg, threshold=0.5)
    assert a.indices == b.indices and a.strata == b.strata
    assert a.indices == sorted(a.indices) and len(set(a.indices)) == 12
    # 3 filter labels x 3 scanners = 9 strata, balanced: every stratum present in the population is drawn
    assert len(a.population_strata) == 9 and set(a.strata) == set(a.population_strata)
    # each chosen slice's stratum is its own labels joined
    for i, s in zip(a.indices, a.strata):
        assert s == " / ".join((a.labels[i]["filter"], a.labels[i]["scanner"]))
    c = select_slices(cands, SelectionConfig(n=12, strategy="filter+scanner", seed=4), threshold=0.5)
    assert c.indices != a.indices


def test_adding_a_stratum_does_not_change_another_strata_draw() -> None:
    cands = _population()
    cfg = SelectionConfig(n=4, strategy="scanner", seed=1, allocation="proportional")
    one = select_slices(cands[:10], SelectionConfig(n=2, strategy="scanner", seed=1), threshold=None)
    both = select_slices(cands[:20], cfg, threshold=None)
    siemens = [i for i, s in zip(both.indices, both.strata) if s.startswith("SIEMENS")]
    assert siemens == one.indices


def test_random_strategy_is_uniform_without_replacement() -> None:
    cands = _population(50)
    sel = select_slices(cands, SelectionConfig(n=150, strategy="random", seed=0), threshold=None)
    assert sel.indices == list(range(150)) and set(sel.strata) == {"all"}
    picks = np.zeros(150)
    for seed in range(200):
        for i in select_slices(cands, SelectionConfig(n=15, strategy="random", seed=seed), None).indices:
            picks[i] += 1
    # 200 draws of 15 of 150: each slice expected 20 times; a uniform sampler stays within a wide band
    assert picks.min() > 5 and picks.max() < 40


def test_filter_axis_needs_probabilities() -> None:
    cands = [Candidate("u", k, 100.0, 0) for k in range(5)]
    with pytest.raises(ValueError, match="filter probabilities"):
        select_slices(cands, SelectionConfig(n=2, strategy="filter"), threshold=0.5)
    with pytest.raises(ValueError, match="no slices"):
        select_slices([], SelectionConfig(n=2, strategy="random"))
