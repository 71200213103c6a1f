"""`cacstream bench agatston` (engine/scoring/bench.py) and the `cacstream bench` registry.

The bench's three labelling implementations must agree lesion by lesion; the command must exit non-zero
and say where when they do not; its JSON must hold the figures the acceptance criteria name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacstream.engine import cli
from cacstream.engine.commands import bench as bench_command
from cacstream.engine.config import AgatstonConfig
from cacstream.engine.scoring import bench
from cacstream.engine.scoring.ccl import ComponentTable

REQUIRED_KEYS = {
    "numba_ms", "scipy_ms", "cc3d_ms", "memcpy_ms", "compile_ms", "n_lesions", "speedup_vs_scipy",
    "speedup_vs_cc3d", "machine", "agree", "times_ms", "numba_1thread_ms", "score_volume_ms", "cpu_ms",
}
COCA_PATIENT0 = "Gated_release_final/patient/0/Pro_Gated_CS_3.0_I30f_3_70%"


def synthetic_chest(seed: int = 0, slices: int = 10, size: int = 96) -> np.ndarray:
    """Air, a soft-tissue body with noise, a bright 'spine' and calcium specks of every density."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    body = (yy - c) ** 2 + (xx - c) ** 2 <= (0.45 * size) ** 2
    hu = np.where(body, 40.0, -1000.0)[None].repeat(slices, 0) + rng.normal(0, 40, (slices, size, size))
    spine = (yy - 0.78 * size) ** 2 + (xx - c) ** 2 <= (0.08 * size) ** 2
    hu[:, spine] = 600 + rng.normal(0, 80, (slices, int(spine.sum())))
    for z in range(slices):
        for _ in range(8):
            y0, x0 = rng.integers(10, size - 10, 2)
            r = rng.uniform(0.8, 3.0)
            hu[z, (yy - y0) ** 2 + (xx - x0) ** 2 <= r * r] = rng.uniform(130, 900)
    return np.clip(np.rint(hu), -1024, 3000).astype(np.float32)


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cacstream.training.dicom_writer import write_ct_series

    out = tmp_path_factory.mktemp("bench-series")
    write_ct_series(synthetic_chest(), out, pixel_spacing_mm=(0.45, 0.45), slice_thickness_mm=3.0)
    return out


def test_bench_agatston_cli_writes_json_with_agreeing_implementations(series_dir: Path, tmp_path: Path,
                                                                      capsys):
    out = tmp_path / "bench.json"
    rc = cli.main(["bench", "agatston", str(series_dir), "--json", str(out), "--repeats", "3"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert REQUIRED_KEYS <= set(data)
    assert data["agree"] is True and data["problems"] == []
    assert data["n_lesions"] > 10
    for key in ("numba_ms", "scipy_ms", "cc3d_ms", "memcpy_ms", "compile_ms"):
        assert data[key] > 0
    assert data["speedup_vs_scipy"] == pytest.approx(data["scipy_ms"] / data["numba_ms"])
    assert data["speedup_vs_cc3d"] == pytest.approx(data["cc3d_ms"] / data["numba_ms"])
    assert all(len(v) == 3 for v in data["times_ms"].values())
    assert data["series"]["shape"] == [10, 96, 96]
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["numba"]
    printed = capsys.readouterr().out
    assert "numba" in printed and "scipy" in printed and "cc3d" in printed


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), connectivity=st.sampled_from([4, 8]),
       min_area=st.sampled_from([0.0, 0.25, 1.0, 2.0]), dtype=st.sampled_from([np.float32, np.float64]))
def test_numba_scipy_and_cc3d_agree_lesion_by_lesion(seed, connectivity, min_area, dtype):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    hu = rng.choice(np.array([-100, 0, 129, 130, 199.5, 200, 299, 300, 399, 400, 800]), size=shape)
    hu = np.where(rng.random(shape) < rng.uniform(0.1, 0.9), hu, -500).astype(dtype)
    cfg = AgatstonConfig(connectivity=connectivity, min_area_mm2=min_area)
    ref, raw = bench.numba_impl(hu, 0.25, cfg)
    for impl in (bench.scipy_impl, bench.cc3d_impl):
        table, other_raw = impl(hu, 0.25, cfg)
        assert bench.compare_tables(ref, table, impl.__name__) == []
        assert other_raw == pytest.approx(raw, rel=1e-12)
        assert np.array_equal(table.slice_index, ref.slice_index)  # all three come out slice-major


def _drop(table: ComponentTable, i: int) -> ComponentTable:
    keep = np.ones(len(table), bool)
    keep[i] = False
    return ComponentTable(*(getattr(table, f)[keep] for f in ComponentTable.__dataclass_fields__))


def test_compare_tables_names_the_slice_of_a_difference():
    hu = synthetic_chest(3, slices=4, size=64)
    cfg = AgatstonConfig()
    ref, _ = bench.numba_impl(hu, 0.25, cfg)
    assert len(ref) > 3
    dropped = _drop(ref, 2)
    msg = bench.compare_tables(ref, dropped, "scipy")
    assert len(msg) == 1 and f"slice {ref.slice_index[2]}" in msg[0] and "scipy" in msg[0]
    peak = ref.peak_hu.copy()
    peak[1] += 1.0
    changed = ComponentTable(ref.slice_index, ref.n_pixels, peak, ref.sum_hu, ref.sum_row, ref.sum_col,
                             ref.majority_label)
    msg = bench.compare_tables(ref, changed, "cc3d")
    assert len(msg) == 1 and f"slice {ref.slice_index[1]}" in msg[0] and "peak HU" in msg[0]


def test_disagreement_exits_1_and_says_where(series_dir: Path, monkeypatch, capsys):
    real = bench.scipy_impl

    def broken(hu, pixel_area, config):
        table, raw = real(hu, pixel_area, config)
        return _drop(table, 0), raw

    monkeypatch.setattr(bench, "scipy_impl", broken)
    rc = cli.main(["bench", "agatston", str(series_dir), "--repeats", "1"])
    err = capsys.readouterr().err
    assert rc == bench.EXIT_DISAGREE
    assert "DISAGREE" in err and "scipy finds" in err and "slice 0" in err


def test_nothing_to_measure_exits_2_with_a_reason(tmp_path: Path, capsys):
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert cli.main(["bench", "agatston", str(tmp_path)]) == bench.EXIT_UNUSABLE
    assert "no eligible CT series" in capsys.readouterr().err
    assert cli.main(["bench", "agatston", str(tmp_path / "missing")]) == bench.EXIT_UNUSABLE
    assert "does not exist" in capsys.readouterr().err


def test_bench_registry_reports_a_missing_module_clearly(monkeypatch, capsys):
    monkeypatch.setitem(bench_command.SUB_BENCHMARKS, "future", "cacstream.engine.no_such_bench_module")
    module, why = bench_command.load_benchmark("cacstream.engine.no_such_bench_module")
    assert module is None and "not part of this installation" in why
    assert cli.main(["bench", "future", "--anything"]) == bench_command.EXIT_UNAVAILABLE
    assert "cacstream.engine.no_such_bench_module" in capsys.readouterr().err
    module, why = bench_command.load_benchmark("json")  # importable, but not a benchmark module
    assert module is None and "not a benchmark module" in why
    assert cli.main(["bench"]) == bench_command.EXIT_UNAVAILABLE
    assert "agatston" in capsys.readouterr().err


def test_bench_on_coca_patient0_agrees(coca_root: Path, tmp_path: Path):
    """The real 57-slice series (~1,500 lesions over the whole slices): one round, agreement only."""
    out = tmp_path / "coca.json"
    rc = cli.main(["bench", "agatston", str(coca_root / COCA_PATIENT0), "--json", str(out), "--repeats", "1"])
    data = json.loads(out.read_text())
    assert rc == 0 and data["agree"] is True
    assert data["series"]["shape"] == [57, 512, 512]
    assert 1000 <= data["n_lesions"] <= 2000
