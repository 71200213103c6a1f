"""Scanner mass calibration (calibration/hu_mass.py): the mg/(HU·cm³) factor from inserts of known density."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from cacstream.calibration.hu_mass import MassCalibrationError, calibrate_volume, fit_factor


def _discs(
    hus: list[float], radius_px: float = 6.0, slices: int = 6, n: int = 96, row: int = 48
) -> np.ndarray:
    vol = np.zeros((slices, n, n), np.float32)
    rows, cols = np.ogrid[:n, :n]
    for j, h in enumerate(hus):
        c = 16 + j * 30
        disc = (rows - row) ** 2 + (cols - c) ** 2 <= radius_px**2
        vol[1:-1, disc] = h
    return vol


def test_fit_through_the_origin_by_hand() -> None:
    c, r2, worst = fit_factor([250.0, 500.0, 1000.0], [200.0, 400.0, 800.0])
    assert c == pytest.approx(0.8) and r2 == pytest.approx(1.0) and worst == pytest.approx(0.0, abs=1e-12)
    # least squares: c = Σρh / Σh²
    h, rho = np.array([100.0, 210.0]), np.array([80.0, 160.0])
    assert fit_factor(list(h), list(rho))[0] == pytest.approx(float((rho * h).sum() / (h * h).sum()))


def test_exact_discs_give_the_exact_factor() -> None:
    cal = calibrate_volume(_discs([250.0, 500.0, 1000.0]), (0.5, 0.5), [800.0, 200.0, 400.0])
    assert cal.factor_mg_per_hu_cm3 == pytest.approx(0.8)
    assert [i.density_mg_cm3 for i in cal.inserts] == [200.0, 400.0, 800.0]  # matched by rank
    assert [i.mean_hu for i in cal.inserts] == [250.0, 500.0, 1000.0]
    assert all(
        len(i.slices) == 4 and i.radius_mm == pytest.approx(math.sqrt(113 / math.pi) * 0.5, rel=0.05)
        for i in cal.inserts
    )
    assert cal.water_hu == 0.0


def test_more_inserts_than_densities_uses_the_largest_of_each_cluster() -> None:
    vol = _discs([250.0, 500.0, 1000.0], radius_px=6.0) + _discs([240.0, 480.0, 950.0], radius_px=3.0, row=80)
    cal = calibrate_volume(vol, (0.5, 0.5), [200.0, 400.0, 800.0])
    assert [round(i.mean_hu) for i in cal.inserts] == [250, 500, 1000]


def test_too_few_inserts_is_a_clear_error() -> None:
    with pytest.raises(MassCalibrationError, match="found 2 insert"):
        calibrate_volume(_discs([250.0, 500.0]), (0.5, 0.5), [200.0, 400.0, 800.0])
    with pytest.raises(MassCalibrationError, match="positive"):
        calibrate_volume(_discs([250.0]), (0.5, 0.5), [-1.0])


def test_qa_phantom_ideal_scan_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The project's QA phantom, ideal mode: inserts of 200/400/800 HU read exactly, so densities of
    200/400/800 mg/cm³ give c = 1; the CLI prints the value for --mass-calibration."""
    import json

    from cacstream.engine.cli import main
    from cacstream.training.phantom import PhantomConfig, make_phantom, write_series

    case = make_phantom(
        5, PhantomConfig(kind="calibration", matrix=256, z_coverage_mm=20.0, ideal=True, thickness_mm=1.0)
    )
    write_series(case, tmp_path / "scan")
    assert (
        main(
            [
                "calibrate",
                "mass",
                str(tmp_path / "scan"),
                "--densities",
                "200",
                "400",
                "800",
                "--json",
                str(tmp_path / "cal.json"),
            ]
        )
        == 0
    )
    assert "--mass-calibration 1.0000" in capsys.readouterr().out
    saved = json.loads((tmp_path / "cal.json").read_text())
    assert [i["mean_hu"] for i in saved["inserts"]] == pytest.approx([200.0, 400.0, 800.0])


def test_realistic_qa_scan_orders_the_inserts() -> None:
    """Blur and noise lower the small inserts' core HU (partial volume), but never their order."""
    from cacstream.training.phantom import PhantomConfig, make_phantom

    case = make_phantom(
        6, PhantomConfig(kind="calibration", matrix=256, z_coverage_mm=30.0, thickness_mm=2.0)
    )
    cal = calibrate_volume(case.hu, case.geometry.pixel_spacing_mm, [200.0, 400.0, 800.0])
    hu = [i.mean_hu for i in cal.inserts]
    assert hu == sorted(hu) and all(0.6 * d < h < 1.1 * d for h, d in zip(hu, (200, 400, 800)))
    assert abs(cal.water_hu) < 5
