"""The scores as a DICOM Structured Report (highdicom, Comprehensive 3D SR, TID 1500 measurement report).

Structure: one TID 1500 "Imaging Measurement Report" for the procedure "Cardiac CT for calcium
scoring" (SCT 426005005), observed by the cacstream device, with one measurement group (TID 1501)
per coronary artery (finding site LM / LAD / LCX / RCA) and one for all coronary arteries. Each group
holds the Agatston score (DCM 112058 "Calcium score", method DCM 112055 "Agatston scoring method"),
the calcium volume (DCM 122660, mm³) and, when a scanner mass calibration is configured, the calcium
mass (DCM 122661, mg). In threshold mode (no models; phantoms and QA) there is one group only, for all
calcium ≥ threshold in the slices, without an anatomic site, because bone counts there too.

The SR carries the patient / study of the source CT (it is a clinical record, stored beside the CT);
cacstream's logs never do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from cacstream import __version__
from cacstream.engine.domain import ARTERIES

MANUFACTURER = "cacstream"

#: SNOMED CT codes of the coronary arteries (pydicom's code dictionary names in comments).
ARTERY_CODES: dict[str, tuple[str, str]] = {
    "LM": ("3227004", "Left main coronary artery"),  # LeftMainCoronaryArtery
    "LAD": ("59438005", "Left anterior descending coronary artery"),  # LeftAnteriorDescendingCoronaryArtery
    "LCX": ("57396003", "Circumflex coronary artery"),  # CircumflexCoronaryArtery
    "RCA": ("13647002", "Right coronary artery"),  # RightCoronaryArtery
}
CORONARY_ARTERY = ("41801008", "Coronary artery")


def _code(value: str, scheme: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def artery_code(artery: str) -> Any:
    value, meaning = ARTERY_CODES[artery]
    return _code(value, "SCT", meaning)


def _measurements(agatston: float, volume_mm3: float, mass_mg: float | None) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    method = codes.DCM.AgatstonScoringMethod
    out = [
        hd.sr.Measurement(name=codes.DCM.CalciumScore, value=float(agatston), unit=_code("1", "UCUM", "no units"),
                          method=method),
        hd.sr.Measurement(name=codes.DCM.CalciumVolume, value=float(volume_mm3), unit=_code("mm3", "UCUM", "cubic millimeter")),
    ]
    if mass_mg is not None:
        out.append(hd.sr.Measurement(name=codes.DCM.CalciumMass, value=float(mass_mg), unit=_code("mg", "UCUM", "milligram")))
    return out


def build_sr(
    report: dict[str, Any],
    source_datasets: Sequence[Dataset],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int = 1,
    series_number: int = 9001,
) -> Dataset:
    """Comprehensive 3D SR of a scored report (``report`` is the JSON report dict, status "scored").

    ``source_datasets``: headers (no pixel data needed) of the scored CT images, recorded as evidence.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if report.get("status") != "scored":
        raise ValueError("an SR is written for scored series only")
    algorithm = hd.sr.AlgorithmIdentification(name="cacstream", version=__version__)
    finding = codes.SCT.VascularCalcification
    groups = []
    mode = report.get("mode")
    mass_per = report.get("mass_mg_per_artery") or {}
    if mode == "model":
        for artery in ARTERIES:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{artery} calcium"),
                finding_type=finding,
                finding_sites=[hd.sr.FindingSite(anatomic_location=artery_code(artery))],
                algorithm_id=algorithm,
                measurements=_measurements(report["agatston_per_artery"][artery],
                                           (report.get("volume_mm3_per_artery") or {}).get(artery, 0.0),
                                           mass_per.get(artery) if report.get("mass_mg_total") is not None else None),
            ))
        sites = [hd.sr.FindingSite(anatomic_location=_code(CORONARY_ARTERY[0], "SCT", CORONARY_ARTERY[1]))]
        label = "all coronary arteries"
    else:
        sites = None
        label = f"all calcium >= {report['agatston_config']['threshold_hu']:g} HU (threshold mode, whole slice)"
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label[:64]),
        finding_type=finding,
        finding_sites=sites,
        algorithm_id=algorithm,
        measurements=_measurements(report["agatston_total"], report["volume_mm3_total"], report.get("mass_mg_total")),
    ))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="cacstream", manufacturer_name=MANUFACTURER, model_name=f"cacstream {__version__}"),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.CardiacCTForCalciumScoring,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(source_datasets),
        content=content[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = f"Calcium score (cacstream, report v{report['report_version']})"[:64]
    return sr
