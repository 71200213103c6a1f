"""QA phantom: a water cylinder with calcium-hydroxyapatite-like inserts (after the QRM phantom).

Nine upright cylindrical inserts — diameters 1, 3, 5 mm × densities 200, 400, 800 HU — on a 3 × 3
grid (25 mm pitch) in the middle of a 300 mm water cylinder (0 HU, 5 mm shell of water-equivalent
plastic, 20 HU). Each insert runs ``calibration_insert_length_mm`` along z, centred on
z = 0. Scanned like a patient (kernel PSF, slice integration, noise), or with ``ideal=True``: no
noise, no blur, point sampling, so a slice whose centre lies within an insert's z range shows it
as exactly the pixels whose centres fall inside the circle — a lattice count that the tests check
against πr².
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from cacstream.engine.series.types import AcquisitionInfo, Geometry
from cacstream.training.phantom import scanner
from cacstream.training.phantom.config import PhantomConfig
from cacstream.training.phantom.plaques import Plaque
from cacstream.training.phantom.render import noise_sigma_map, render_volume
from cacstream.training.phantom.shapes import Extruded, Layer, SliceGrid
from cacstream.training.phantom.truth import (
    acquisition_dict, calcium_masks, geometry_dict, result_dict, score_truth,
)

DIAMETERS_MM: tuple[float, ...] = (1.0, 3.0, 5.0)
DENSITIES_HU: tuple[float, ...] = (200.0, 400.0, 800.0)
PITCH_MM = 25.0
CYLINDER_DIAMETER_MM = 300.0
WALL_MM = 5.0
WALL_HU = 20.0  # water-equivalent plastic shell (well below 130 HU even with noise)


def inserts(length_mm: float) -> list[Plaque]:
    """The nine inserts (row = diameter, column = density), as upright cylinders."""
    out = []
    for i, d in enumerate(DIAMETERS_MM):
        for j, rho in enumerate(DENSITIES_HU):
            centre = ((j - 1) * PITCH_MM, (i - 1) * PITCH_MM, 0.0)
            out.append(Plaque(kind="insert", artery=None, center=centre,
                              rotation=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
                              radii=(d / 2.0, d / 2.0, length_mm / 2.0), density_hu=rho, shape="cylinder_z"))
    return out


def lattice_count(cx: float, cy: float, radius: float, x0: float, y0: float, ps: float, n: int) -> int:
    """Pixels (of an n×n grid) whose centre lies inside the circle (inclusive): the ideal-mode area."""
    c = x0 + ps * np.arange(n)
    dx2 = (c - cx) ** 2
    r = y0 + ps * np.arange(n)
    dy2 = (r - cy) ** 2
    return int(np.count_nonzero(dy2[:, None] + dx2[None, :] <= radius * radius))


def make_calibration(seed: int, config: PhantomConfig, rng: dict[str, np.random.Generator]):
    """Generate the QA phantom (returns a PhantomCase; see generate.make_phantom)."""
    from cacstream.training.phantom.generate import GENERATOR_VERSION, TRUTH_FORMAT, PhantomCase, _z_centres

    t0 = time.perf_counter()
    rp = rng["protocol"]
    fov = float(rp.uniform(200.0, 340.0))
    protocol = scanner.draw_protocol(
        rp, "calibration", matrix=config.matrix, spacing_range=config.pixel_spacing_range_mm, fov_mm=fov,
        body_diameter_mm=CYLINDER_DIAMETER_MM, thickness_mm=config.thickness_mm, increment_mm=config.increment_mm,
        overlap_probability=config.overlap_probability, manufacturer=config.manufacturer, motion=False,
    )
    protocol = replace(protocol, motion=False, ecg_gated=False)
    ps, n_px = protocol.pixel_spacing_mm, config.matrix
    jitter = rp.uniform(-2.0, 2.0, 2) if not config.ideal else np.zeros(2)
    x0 = round(float(jitter[0]) - (n_px - 1) / 2.0 * ps, 4)
    y0 = round(float(jitter[1]) - (n_px - 1) / 2.0 * ps, 4)
    grid = SliceGrid(x0, y0, ps, n_px, n_px)
    length = config.calibration_insert_length_mm
    cover = config.z_coverage_mm if config.z_coverage_mm is not None else max(60.0, length + 20.0)
    # ideal mode: slice centres at half-increments, so none sits exactly on an insert's end
    start = -cover / 2.0 + (protocol.increment_mm / 2.0 if config.ideal else float(rp.uniform(0.0, protocol.increment_mm)))
    z = _z_centres(start, cover / 2.0, protocol.increment_mm)
    ends = np.array([-length / 2.0, length / 2.0])
    if config.ideal and np.min(np.abs(z[:, None] - ends[None, :])) < 1e-3:
        z = np.round(z + protocol.increment_mm / 4.0, 4)
    r = CYLINDER_DIAMETER_MM / 2.0
    water = Extruded(
        name="water_cylinder",
        layers=(Layer(0.0, WALL_HU), Layer(WALL_MM, 0.0)),
        table=np.array([[-1e4, 0.0, 0.0, r, r, r, 2.0], [1e4, 0.0, 0.0, r, r, r, 2.0]]),
    )
    ins = inserts(length)
    rendered = render_volume(
        [water], ins, grid, z, protocol.thickness_mm, protocol.increment_mm, dense_scale=1.0,
        psf_sigma_mm=protocol.psf_sigma_mm, blur=config.blur, ideal=config.ideal, motion=None,
        plaque_motion_key={}, tex_rng=rng["texture"], waves=np.zeros((0, 4)), textures_off=True,
    )
    hu = rendered.noise_free
    sigma = protocol.noise_sigma_hu * config.noise_scale
    if config.noise and not config.ideal and sigma > 0:
        noise = scanner.correlated_noise(rng["noise"], len(z), n_px, n_px, ps, protocol.noise_corr_mm,
                                         protocol.thickness_mm, protocol.increment_mm)
        body = tuple(np.array([v]) for v in (0.0, 0.0, r, r, r, 2.0))
        noise *= noise_sigma_map(grid, body) * np.float32(sigma)
        hu += noise
    hu = scanner.quantise(hu)
    geometry = Geometry(rows=n_px, columns=n_px, pixel_spacing_mm=(ps, ps), slice_thickness_mm=protocol.thickness_mm,
                        slice_increment_mm=protocol.increment_mm, normal=(0.0, 0.0, 1.0), z_mm=tuple(float(v) for v in z))
    acquisition = AcquisitionInfo(manufacturer=protocol.manufacturer, model=protocol.model, kvp=protocol.kvp,
                                  convolution_kernel=protocol.kernel, ecg_gated=False)
    labels, other = calcium_masks(hu, rendered.source_hu, rendered.source_class, rendered.dense_base, 130.0,
                                  config.label_support_hu, config.label_min_contrast_hu)
    result = score_truth(hu, geometry, None)
    insert_records = []
    for p in ins:
        zlo, zhi = p.center[2] - p.radii[2], p.center[2] + p.radii[2]
        slices = [k for k, zc in enumerate(z) if (zlo <= zc <= zhi if config.ideal else zc + protocol.thickness_mm / 2 > zlo and zc - protocol.thickness_mm / 2 < zhi)]
        rec = {
            "diameter_mm": 2 * p.radii[0], "density_hu": p.density_hu, "center_mm": list(p.center),
            "z_range_mm": [zlo, zhi], "analytic_area_mm2": math.pi * p.radii[0] ** 2, "slices": slices,
        }
        if config.ideal:
            rec["ideal_pixel_count"] = lattice_count(p.center[0], p.center[1], p.radii[0], x0, y0, ps, n_px)
            rec["ideal_area_mm2"] = rec["ideal_pixel_count"] * ps * ps
        insert_records.append(rec)
    truth = {
        "format": TRUTH_FORMAT,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "kind": "calibration",
        "config": config.to_dict(),
        "geometry": geometry_dict(geometry, (x0, y0)),
        "acquisition": acquisition_dict(acquisition),
        "protocol": {"psf_fwhm_mm": protocol.psf_fwhm_mm, "noise_sigma_hu": sigma if config.noise and not config.ideal else 0.0,
                     "thickness_mm": protocol.thickness_mm, "increment_mm": protocol.increment_mm, "pixel_spacing_mm": ps,
                     "motion": False, "dense_scale": 1.0, "field_of_view_mm": ps * n_px},
        "phantom": {"cylinder_diameter_mm": CYLINDER_DIAMETER_MM, "wall_mm": WALL_MM, "wall_hu": WALL_HU,
                    "water_hu": 0.0, "insert_pitch_mm": PITCH_MM, "insert_length_mm": length},
        "inserts": insert_records,
        "threshold_mode": {k: v for k, v in result_dict(result).items() if k != "config"},
        "scoring_config": result.config,
        # no coronary arteries: coronary truth is zero by construction
        "agatston_total": 0.0, "agatston_per_artery": {"LM": 0.0, "LAD": 0.0, "LCX": 0.0, "RCA": 0.0},
        "volume_mm3_total": 0.0, "volume_mm3_per_artery": {"LM": 0.0, "LAD": 0.0, "LCX": 0.0, "RCA": 0.0},
        "risk_category": "0", "lesions": [],
        "slice_has_coronary_calcium": [False] * len(z),
        "other_calcium_voxels": int(np.count_nonzero(other)),
    }
    t1 = time.perf_counter()
    return PhantomCase(hu=hu, labels=labels, other_calcium=other, geometry=geometry, acquisition=acquisition,
                       truth=truth, origin_xy_mm=(x0, y0), timings_s={"total": t1 - t0})
