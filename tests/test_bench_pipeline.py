"""``cacstream bench pipeline`` (engine/bench/): the short CI mode writes its three outputs with consistent
figures, and the naive baseline scores like the engine (so the speedup compares equal work)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from _tiny_weights import tiny_weights_dir


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_dir(tmp_path_factory)


def test_naive_agatston_equals_the_engine_on_the_same_labels() -> None:
    from cacstream.engine.bench.naive import _agatston_scipy
    from cacstream.engine.config import AgatstonConfig
    from cacstream.engine.scoring.agatston import score_volume
    from cacstream.training.phantom import PhantomConfig, make_phantom

    case = make_phantom(9410, PhantomConfig(matrix=128, z_coverage_mm=30.0, calcium_category=">400"))
    g = case.geometry
    cfg = AgatstonConfig()
    ref = score_volume(case.hu, g, case.labels, cfg).agatston_total
    spacing = (g.slice_increment_mm, *g.pixel_spacing_mm)
    ours = _agatston_scipy(case.hu, case.labels, g.pixel_area_mm2, g.effective_thickness_mm / 3.0, cfg,
                           g.voxel_volume_mm3, spacing)
    assert ref > 0 and ours == pytest.approx(ref, rel=1e-9)
    # labels on everything >= 130 HU (bone included): both drop the skeleton's calcium the same way
    everything = np.where(case.hu >= 130, 1, 0).astype(np.uint8)
    ref_all = score_volume(case.hu, g, everything, cfg)
    assert ref_all.excluded_lesions  # the phantom's bone is excluded
    ours_all = _agatston_scipy(case.hu, everything, g.pixel_area_mm2, g.effective_thickness_mm / 3.0, cfg,
                               g.voxel_volume_mm3, spacing)
    assert ours_all == pytest.approx(ref_all.agatston_total, rel=1e-9)


def test_short_mode_writes_json_md_png(weights: Path, tmp_path: Path) -> None:
    from cacstream.engine.bench.measure import STAGES
    from cacstream.engine.cli import main

    t0 = time.perf_counter()
    code = main(
        [
            "bench",
            "pipeline",
            "--short",
            "--weights",
            str(weights),
            "--json",
            str(tmp_path / "b.json"),
            "--md",
            str(tmp_path / "b.md"),
            "--png",
            str(tmp_path / "b.png"),
            "--quiet",
        ]
    )
    seconds = time.perf_counter() - t0
    assert code == 0
    f = json.loads((tmp_path / "b.json").read_text())
    assert (tmp_path / "b.png").stat().st_size > 10_000
    md = (tmp_path / "b.md").read_text()
    assert f["short"] and f["weights_id"] == "tiny-test" and f["device"]["cpu_model"]
    (c,) = f["configs"]
    assert (c["backend"], c["precision"], c["batch_size"]) == ("onnxruntime", "fp32", 8)
    for st in STAGES:
        s = c["stages_ms"][st]
        assert 0 <= s["min"] <= s["p50"] <= s["p95"] <= s["max"], st
    e = c["end_to_end_ms"]
    assert e["p50"] > 0 and c["slices_median"] == 10  # 28 mm at 3 mm: the short phantom's 10 slices
    assert c["slices_per_s"] == pytest.approx(10 / (e["p50"] / 1e3))
    assert c["stages_ms_per_slice_p50"]["decode"] == pytest.approx(c["stages_ms"]["decode"]["p50"] / 10)
    assert c["series_per_hour"] == pytest.approx(3600.0 / (e["p50"] / 1e3))
    naive = f["baselines"]["naive_serial"]
    assert f["summary"]["speedup_vs_naive_p50"] == pytest.approx(naive["end_to_end_ms"]["p50"] / e["p50"])
    vw = c["volume_wide"]["model_ms"]["p50"]
    assert c["filter_savings"]["model_compute_saved"] == pytest.approx(1 - c["model_ms"]["p50"] / vw)
    assert c["filter_savings"]["slices_skipped"] == pytest.approx(1 - c["flagged_fraction"])
    # the engine path, the stage profile and the naive baseline score the same series: the same Agatston
    # whenever the filter flags every slice (tiny weights do); all three are real scores of that phantom
    assert len(c["agatston_totals"]) == 1
    if c["flagged_fraction"] == 1.0:
        assert naive["agatston_totals"][0] == pytest.approx(c["agatston_totals"][0], rel=0.05, abs=1.0)
    st = f["stream"]
    assert "error" not in st and 0 <= st["latency_minus_quiet_s"] < 30 and st["slices"] >= 8
    assert "speedup over the naive baseline" in md and "| onnxruntime | fp32 | 8 |" in md
    assert seconds < 120, seconds  # CI budget on a loaded 2-core machine; ~25 s idle


def test_missing_weights_and_bad_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cacstream.engine.cli import main

    monkeypatch.setenv("CACSTREAM_WEIGHTS", str(tmp_path / "nowhere"))
    assert main(["bench", "pipeline", "--short", "--quiet"]) == 2
    assert "no model weights installed" in capsys.readouterr().err
    assert main(["bench", "pipeline", "--short", "--repeats", "0", "--quiet"]) == 2


def test_percentiles_by_hand() -> None:
    from cacstream.engine.bench.measure import percentiles

    p = percentiles([1.0, 2.0, 3.0, 4.0, 100.0])
    assert p["p50"] == 3.0 and p["p95"] == pytest.approx(4.0 + 0.8 * 96.0) and p["n"] == 5
    assert np.isclose(percentiles([5.0])["p95"], 5.0)
