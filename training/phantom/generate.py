"""``make_phantom``: one synthetic CT series with known calcium, and ``write_series`` to DICOM.

Deterministic per seed: every random choice comes from streams spawned from ``SeedSequence(seed)``
(anatomy, protocol, plaques, motion, texture, noise each have their own), so the same seed and
config always give the same arrays and truth.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cacstream.engine.domain import ARTERIES
from cacstream.engine.series.types import AcquisitionInfo, Geometry
from cacstream.training.phantom import scanner
from cacstream.training.phantom.anatomy import draw_patient
from cacstream.training.phantom.config import PhantomConfig
from cacstream.training.phantom.coronaries import MOTION_SCALE
from cacstream.training.phantom.plaques import (
    draw_aortic_plaques, draw_category, draw_coronary_plaques, draw_valve_plaques,
)
from cacstream.training.phantom.render import Rendered, draw_motion, noise_sigma_map, render_volume
from cacstream.training.phantom.shapes import SliceGrid
from cacstream.training.phantom.truth import (
    acquisition_dict, calcium_masks, geometry_dict, result_dict, score_truth, slice_flags,
)

#: Version of the generator's model of anatomy and scanner (bump when images change for a seed).
GENERATOR_VERSION = "1"

TRUTH_FORMAT = "cacstream-phantom-truth/1"


@dataclass
class PhantomCase:
    """A generated series: reconstructed HU, truth masks, geometry, scanner and the truth record.

    ``hu``: float32 (Z, Y, X), integer-valued HU as a scanner would store them.
    ``labels``: uint8 (Z, Y, X), coronary calcium per artery (engine/domain.py labels).
    ``other_calcium``: bool (Z, Y, X), calcium/bone ≥ 130 HU that is not coronary.
    ``origin_xy_mm``: patient x, y of pixel (0, 0) (ImagePositionPatient of every slice).
    """

    hu: np.ndarray
    labels: np.ndarray
    other_calcium: np.ndarray
    geometry: Geometry
    acquisition: AcquisitionInfo
    truth: dict
    origin_xy_mm: tuple[float, float]
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.truth["seed"])

    @property
    def kind(self) -> str:
        return str(self.truth["kind"])

    @property
    def slice_has_calcium(self) -> list[bool]:
        """Per slice: at least one scored coronary lesion (target of the slice filter)."""
        return list(self.truth["slice_has_coronary_calcium"])


def _streams(seed: int) -> dict[str, np.random.Generator]:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    # appended names get new streams and leave the earlier ones (and so every earlier phantom) unchanged
    names = ("kind", "anatomy", "protocol", "plaques", "motion", "texture", "noise", "calibration", "cartilage",
             "coronary_fat")
    children = np.random.SeedSequence([int(seed), 0xCAC5]).spawn(len(names))
    return {n: np.random.default_rng(c) for n, c in zip(names, children)}


def resolve_kind(seed: int, config: PhantomConfig) -> str:
    """The kind a seed gets ("mixed" draws gated or chest with equal odds)."""
    if config.kind != "mixed":
        return config.kind
    return "cardiac_gated" if _streams(seed)["kind"].random() < 0.5 else "chest"


def _z_centres(bottom: float, top: float, inc: float) -> np.ndarray:
    n = max(1, int(math.floor((top - bottom) / inc + 1e-9)) + 1)
    start = round(bottom / 0.05) * 0.05
    return np.round(start + inc * np.arange(n), 4)


@dataclass
class PhantomPlan:
    """Everything drawn for a seed before any pixel is rendered (cheap to make: see plan_phantom)."""

    seed: int
    kind: str
    config: PhantomConfig
    patient: object  # anatomy.Patient
    protocol: scanner.Protocol
    grid: SliceGrid
    z_mm: np.ndarray
    category: str
    plaques: list
    n_coronary: int
    body: tuple
    rng: dict

    @property
    def coronary_plaques(self) -> list:
        return self.plaques[: self.n_coronary]


def plan_phantom(seed: int, config: PhantomConfig | None = None, detail: bool = True) -> PhantomPlan:
    """Draw patient, scanner, field of view, scan range and plaques for a seed (no rendering).

    ``detail=False`` skips what only the pixels need (organs, skeleton, lung vessel trees): the
    geometry, protocol and plaques are the same as with ``detail=True``.
    """
    config = config or PhantomConfig()
    rng = _streams(seed)
    kind = resolve_kind(seed, config)
    if kind == "calibration":
        raise ValueError("the calibration phantom has no patient plan; use make_phantom")
    gated = kind == "cardiac_gated"
    z_heart = float(np.round(rng["anatomy"].uniform(-190.0, -120.0), 2))
    patient = draw_patient(rng["anatomy"], z_heart, with_table=not gated, detail=detail,
                           cartilage_foci=(rng["cartilage"], config.cartilage_foci_probability),
                           lean_fat=(rng["coronary_fat"], config.lean_coronary_fat_probability))
    torso = patient.torso
    lo, hi = patient.heart.extent()
    rp = rng["protocol"]
    body = torso.body_params(np.array([z_heart]))
    if gated:  # centred between sternum and spine, a little left: heart, aorta and spine in view
        fov = float(rp.uniform(180.0, 230.0))
        front = float(torso.cavity_front_y(np.array([z_heart]))[0])
        spine = float(torso.spine_y(np.array([z_heart]))[0])
        cxy = np.array([0.6 * 0.5 * (lo[0] + hi[0]), 0.5 * (front + spine) + 12.0]) + rp.normal(0.0, 5.0, 2)
    else:
        fov = float(2.0 * body[2][0] * rp.uniform(1.06, 1.2))
        cxy = np.array([0.0, 0.5 * (body[4][0] - body[3][0]) + rp.uniform(5.0, 20.0)])
    protocol = scanner.draw_protocol(
        rp, kind, matrix=config.matrix, spacing_range=config.pixel_spacing_range_mm, fov_mm=fov,
        body_diameter_mm=torso.body_diameter_mm, thickness_mm=config.thickness_mm,
        increment_mm=config.increment_mm, overlap_probability=config.overlap_probability,
        manufacturer=config.manufacturer, motion=config.motion,
    )
    if config.ideal:
        protocol = replace(protocol, motion=False)
    ps, n_px = protocol.pixel_spacing_mm, config.matrix
    x0 = round(float(cxy[0]) - (n_px - 1) / 2.0 * ps, 4)
    y0 = round(float(cxy[1]) - (n_px - 1) / 2.0 * ps, 4)
    grid = SliceGrid(x0, y0, ps, n_px, n_px)

    category = draw_category(rng["plaques"], config.calcium_category)
    coronary = draw_coronary_plaques(rng["plaques"], patient.arteries, category)
    aortic = draw_aortic_plaques(rng["plaques"], patient.vessels, config.aortic_calcium_probability, category,
                                 config.aortic_part_weights)
    valve = draw_valve_plaques(rng["plaques"], patient.heart, patient.arteries, config.valve_calcium_probability)

    inc = protocol.increment_mm
    art_z = np.concatenate([a.path[:, 2] for a in patient.arteries.values()])
    if config.z_coverage_mm is not None:
        centre = float(np.median([p.center[2] for p in coronary])) if coronary else float(patient.arteries["LM"].path[-1, 2])
        bottom, top = centre - config.z_coverage_mm / 2.0, centre + config.z_coverage_mm / 2.0
    elif gated:
        top = float(art_z.max() + rp.uniform(15.0, 40.0))
        bottom = float(lo[2] - rp.uniform(10.0, 30.0))
    else:
        top = float(torso.apex_z + rp.uniform(0.0, 15.0))
        bottom = float(patient.dome_z - rp.uniform(70.0, 110.0))
    return PhantomPlan(seed=int(seed), kind=kind, config=config, patient=patient, protocol=protocol, grid=grid,
                       z_mm=_z_centres(bottom, top, inc), category=category, plaques=coronary + aortic + valve,
                       n_coronary=len(coronary), body=body, rng=rng)


def render_plan(plan: PhantomPlan) -> Rendered:
    """Noise-free image and truth sources of a (detailed) plan."""
    config, protocol = plan.config, plan.protocol
    moving = protocol.motion and not config.ideal
    motion = None
    if not config.ideal:
        motion = draw_motion(plan.rng["motion"], len(plan.z_mm), protocol.pixel_spacing_mm, moving,
                             plan.kind == "cardiac_gated", MOTION_SCALE)
    motion_key = {}
    for k, p in enumerate(plan.plaques):
        if p.kind == "coronary":
            motion_key[k] = p.artery
        elif p.kind == "valve":
            motion_key[k] = "LCX"
    rt = plan.rng["texture"]
    waves = np.concatenate([rt.normal(0.0, 0.12, (6, 3)), rt.uniform(0, 2 * np.pi, (6, 1))], axis=1)
    return render_volume(
        plan.patient.shapes, plan.plaques, plan.grid, plan.z_mm, protocol.thickness_mm, protocol.increment_mm,
        dense_scale=protocol.dense_scale, psf_sigma_mm=protocol.psf_sigma_mm, blur=config.blur, ideal=config.ideal,
        motion=motion, plaque_motion_key=motion_key, tex_rng=rt, waves=waves,
    )


def make_phantom(seed: int, config: PhantomConfig | None = None) -> PhantomCase:
    """Generate one series (see PhantomConfig for what can be forced; everything else is drawn)."""
    config = config or PhantomConfig()
    if resolve_kind(seed, config) == "calibration":
        from cacstream.training.phantom.calibration import make_calibration

        return make_calibration(seed, config, _streams(seed))
    t0 = time.perf_counter()
    plan = plan_phantom(seed, config)
    protocol, grid, z, kind = plan.protocol, plan.grid, plan.z_mm, plan.kind
    patient, torso = plan.patient, plan.patient.torso
    ps, n_px, inc = protocol.pixel_spacing_mm, config.matrix, protocol.increment_mm
    x0, y0 = grid.x0, grid.y0
    t_draw = time.perf_counter()
    rendered = render_plan(plan)
    t_render = time.perf_counter()
    hu = rendered.noise_free
    sigma = protocol.noise_sigma_hu * config.noise_scale
    if config.noise and not config.ideal and sigma > 0:
        noise = scanner.correlated_noise(plan.rng["noise"], len(z), n_px, n_px, ps, protocol.noise_corr_mm,
                                         protocol.thickness_mm, inc)
        noise *= noise_sigma_map(grid, plan.body) * np.float32(sigma)
        hu += noise
        del noise
    hu = scanner.quantise(hu)
    t_noise = time.perf_counter()

    moving = protocol.motion and not config.ideal
    lo, hi = patient.heart.extent()
    geometry = Geometry(rows=n_px, columns=n_px, pixel_spacing_mm=(ps, ps), slice_thickness_mm=protocol.thickness_mm,
                        slice_increment_mm=inc, normal=(0.0, 0.0, 1.0), z_mm=tuple(float(v) for v in z))
    acquisition = AcquisitionInfo(manufacturer=protocol.manufacturer, model=protocol.model, kvp=protocol.kvp,
                                  convolution_kernel=protocol.kernel, ecg_gated=protocol.ecg_gated)
    labels, other = calcium_masks(hu, rendered.source_hu, rendered.source_class, rendered.dense_base,
                                  130.0, config.label_support_hu, config.label_min_contrast_hu)
    result = score_truth(hu, geometry, labels)
    t_truth = time.perf_counter()
    truth = {
        "format": TRUTH_FORMAT,
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "kind": kind,
        "config": config.to_dict(),
        "geometry": geometry_dict(geometry, (x0, y0)),
        "acquisition": acquisition_dict(acquisition),
        "protocol": {
            "psf_fwhm_mm": protocol.psf_fwhm_mm, "noise_sigma_hu": sigma if config.noise and not config.ideal else 0.0,
            "thickness_mm": protocol.thickness_mm, "increment_mm": inc, "pixel_spacing_mm": ps, "motion": moving,
            "dense_scale": protocol.dense_scale, "field_of_view_mm": ps * n_px,
        },
        "target_category": plan.category,
        **{k: v for k, v in result_dict(result).items() if k != "config"},
        "scoring_config": result.config,
        "slice_has_coronary_calcium": slice_flags(result, len(z)),
        "plaques": [p.to_dict() for p in plan.plaques],
        "labelled_voxels_per_artery": {a: int(np.count_nonzero(labels == i + 1)) for i, a in enumerate(ARTERIES)},
        "other_calcium_voxels": int(np.count_nonzero(other)),
        "label_definition": {
            "threshold_hu": 130.0, "support_hu": config.label_support_hu,
            "min_contrast_hu": config.label_min_contrast_hu,
            "text": "labels = HU>=130 voxels in an artery's plaque footprint (>= support_hu of blurred plaque "
                    "contribution, largest source) whose in-slice 8-connected blob reaches min_contrast_hu",
        },
        "landmarks": {"heart_z_range_mm": [float(lo[2]), float(hi[2])], "carina_z_mm": patient.carina_z,
                      "dome_z_mm": patient.dome_z, "lung_apex_z_mm": torso.apex_z,
                      "lm_bifurcation_mm": [float(v) for v in patient.arteries["LM"].path[-1]]},
    }
    timings = {"draw": t_draw - t0, "render": t_render - t_draw, "noise": t_noise - t_render,
               "truth": t_truth - t_noise, "total": t_truth - t0}
    return PhantomCase(hu=hu, labels=labels, other_calcium=other, geometry=geometry, acquisition=acquisition,
                       truth=truth, origin_xy_mm=(x0, y0), timings_s=timings)


def series_folder_name(case: PhantomCase) -> str:
    return f"phantom_{case.kind}_s{case.seed:06d}"


def _uid(seed: int, kind: str, what: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["cacstream-phantom", GENERATOR_VERSION, str(seed), kind, what]))


def write_series(
    case: PhantomCase,
    out_dir: Path,
    *,
    folder: str | None = None,
    write_labels: bool = True,
    transfer_syntax: str = "explicit_le",
) -> list[Path]:
    """Write the CT slices + ``truth.json`` (+ ``labels.npz``) into ``out_dir/<folder>``.

    UIDs (study, series, frame of reference, every SOP instance) are derived from the seed, so
    writing a seed twice gives identical identities. Returns the DICOM paths, in slice order.
    """
    from cacstream.training.dicom_writer import write_ct_series

    target = Path(out_dir) / (folder or series_folder_name(case))
    target.mkdir(parents=True, exist_ok=True)
    seed, kind = case.seed, case.kind
    series_uid = _uid(seed, kind, "series")
    sop_uids = [_uid(seed, kind, f"sop{k}") for k in range(case.geometry.n_slices)]
    protocol = case.truth.get("protocol", {})

    def extra(ds, k: int) -> None:
        ds.SOPInstanceUID = sop_uids[k]
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uids[k]
        if protocol.get("field_of_view_mm"):
            ds.ReconstructionDiameter = f"{protocol['field_of_view_mm']:.2f}"
        if case.geometry.slice_increment_mm != case.geometry.slice_thickness_mm:
            ds.SpacingBetweenSlices = f"{case.geometry.slice_increment_mm:.4g}"

    paths = write_ct_series(
        case.hu, target, pixel_spacing_mm=case.geometry.pixel_spacing_mm,
        slice_thickness_mm=case.geometry.slice_thickness_mm, z_positions_mm=case.geometry.z_mm,
        origin_xy_mm=case.origin_xy_mm, series_uid=series_uid, study_uid=_uid(seed, kind, "study"),
        frame_of_reference_uid=_uid(seed, kind, "for"), acquisition=case.acquisition,
        transfer_syntax=transfer_syntax, series_description=f"cacstream phantom {kind} seed {seed}",
        patient_id=f"PHANTOM{seed:06d}", extra=extra,
    )
    truth = dict(case.truth)
    truth["series_instance_uid"] = series_uid
    truth["files"] = [p.name for p in paths]
    (target / "truth.json").write_text(json.dumps(truth, indent=1))
    if write_labels:
        np.savez_compressed(target / "labels.npz", labels=case.labels, other_calcium=case.other_calcium)
    return paths
