"""Key-image PNG: the slice(s) with the highest score, lesions coloured by artery, legend and scores.

What a reader checks first: is the counted calcium in the coronaries? Up to ``max_panels`` slices with
the highest per-slice Agatston contribution are shown in a calcium-friendly window, each lesion pixel
painted in its artery's colour, under a header with the total, the risk category and the per-artery
scores, above a colour legend. Drawn with PIL (a few tens of milliseconds, so the image does not delay
the report; matplotlib took a second).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cacstream.engine.domain import ARTERIES, LABEL_ARTERY
from cacstream.engine.pipeline.stages import UNASSIGNED_LABEL
from cacstream.engine.report.dicom_seg import ARTERY_RGB

#: Display window of the CT (HU): soft tissue stays grey, calcium bright.
WINDOW_HU = (-300.0, 900.0)
#: Each panel is scaled to this many pixels on its longer side (nearest neighbour: pixels stay visible).
PANEL_PX = 384
#: How the header names each reason of ``excluded_lesions`` (any other reason is shown as it is).
EXCLUSION_WORDS = {"skeletal": "bone (skeletal check)", "partial_claim": "split calcium (claim rule)",
                   "juxta_skeletal": "beside bone (bone-distance rule)",
                   "outside_cardiac_levels": "above or below the heart (cardiac levels)"}
_BG = (16, 16, 16)
_FG = (235, 235, 235)


def per_slice_scores(report: dict[str, Any]) -> dict[int, float]:
    """Summed lesion score (area × weight, before the thickness factor) per slice index."""
    per: dict[int, float] = {}
    for les in report.get("lesions", []):
        per[int(les["slice_index"])] = per.get(int(les["slice_index"]), 0.0) + float(les["score"])
    return per


def top_slices(report: dict[str, Any], max_panels: int = 3) -> list[int]:
    """Slice indices with the highest summed lesion score, best first (ties: lower index)."""
    return [i for i, _ in sorted(per_slice_scores(report).items(), key=lambda kv: (-kv[1], kv[0]))[:max_panels]]


def _colour_of(value: int) -> tuple[int, int, int]:
    return ARTERY_RGB["calcium"] if value == UNASSIGNED_LABEL else ARTERY_RGB[LABEL_ARTERY[value]]


def panel_rgb(hu: np.ndarray, label_map: np.ndarray | None) -> np.ndarray:
    """uint8 RGB of one slice: windowed grey, lesion pixels in their artery's colour."""
    lo, hi = WINDOW_HU
    grey = (np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if label_map is not None:
        lut = np.zeros((256, 3), dtype=np.uint8)
        for v in range(1, 256):
            if v in LABEL_ARTERY or v == UNASSIGNED_LABEL:
                lut[v] = _colour_of(v)
        mask = label_map > 0
        rgb[mask] = lut[label_map[mask]]
    return rgb


def exclusion_note(report: dict[str, Any]) -> str:
    """The header's line on lesions found but not counted, per reason (they are not drawn, but the reader
    must know they were found and set aside): "" when there are none."""
    excluded = report.get("excluded_lesions") or []
    if not excluded:
        return ""
    factor = float((report.get("agatston_config") or {}).get("thickness_factor", 1.0))
    parts = []
    for reason in dict.fromkeys(str(les.get("reason")) for les in excluded):
        group = [les for les in excluded if str(les.get("reason")) == reason]
        raw = sum(float(les["score"]) for les in group) * factor
        parts.append(f"{EXCLUSION_WORDS.get(reason, reason)}: {len(group)} lesions, Agatston {raw:.1f}")
    return "    excluded, not counted: " + "; ".join(parts)


def _wrap(text: str, font: Any, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels in ``font`` (a single word
    wider than that keeps a line of its own)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if line and font.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    if line:
        lines.append(line)
    return lines


def _z(report: dict[str, Any], index: int) -> float:
    for les in report.get("lesions", []):
        if int(les["slice_index"]) == index:
            return float(les["z_mm"])
    return float("nan")


def render_key_image(
    report: dict[str, Any],
    hu_by_slice: Mapping[int, np.ndarray],
    label_maps: Mapping[int, np.ndarray],
    slices: Sequence[int],
) -> bytes:
    """PNG bytes. ``slices``: indices to show (e.g. :func:`top_slices`); ``hu_by_slice[i]`` their HU."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=13)
    per = per_slice_scores(report)
    factor = float((report.get("agatston_config") or {}).get("thickness_factor", 1.0))
    n_slices = (report.get("geometry") or {}).get("n_slices", "?")
    panels = []
    for i in slices:
        rgb = panel_rgb(hu_by_slice[i], label_maps.get(i))
        img = Image.fromarray(rgb, "RGB")
        scale = PANEL_PX / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
        panels.append((i, img))
    pad, head, cap, foot = 12, 64, 40, 40
    width = max(PANEL_PX + 2 * pad, sum(p.width for _, p in panels) + pad * (len(panels) + 1))
    note_lines = _wrap(exclusion_note(report).strip(), small, width - 2 * pad)
    head += 17 * len(note_lines)
    height = head + cap + (max((p.height for _, p in panels), default=120)) + foot + pad
    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    uid = str(report.get("series_instance_uid", ""))
    draw.text((pad, 8), f"Agatston {report.get('agatston_total', 0.0):.1f}    risk {report.get('risk_category')}    "
                        f"volume {report.get('volume_mm3_total', 0.0):.1f} mm3    ({report.get('mode')} mode, "
                        f"report v{report.get('report_version')})", fill=_FG, font=font)
    per_artery = report.get("agatston_per_artery") or {}
    if report.get("mode") == "model":
        draw.text((pad, 30), "   ".join(f"{a} {per_artery.get(a, 0.0):.1f}" for a in ARTERIES), fill=_FG, font=font)
    draw.text((pad, 48), f"series …{uid[-40:]}", fill=(160, 160, 160), font=small)
    for k, line in enumerate(note_lines):  # every reason in full, however many (a reader must see them)
        draw.text((pad, 66 + 17 * k), line, fill=(160, 160, 160), font=small)
    x = pad
    for i, img in panels:
        draw.text((x, head + 2), f"slice {i + 1}/{n_slices}   z {_z(report, i):.1f} mm", fill=_FG, font=small)
        draw.text((x, head + 19), f"slice score {per.get(i, 0.0) * factor:.1f}", fill=_FG, font=small)
        canvas.paste(img, (x, head + cap))
        x += img.width + pad
    if not panels:
        draw.text((pad, head + cap + 40), "no calcium lesion", fill=_FG, font=font)
    legend = [(a, ARTERY_RGB[a]) for a in ARTERIES] if report.get("mode") == "model" else []
    if report.get("mode") != "model":
        legend.append(("calcium >= threshold, no artery (threshold mode: bone included)", ARTERY_RGB["calcium"]))
    x, y = pad, height - foot + 10
    for name, colour in legend:
        draw.rectangle((x, y, x + 14, y + 14), fill=colour)
        draw.text((x + 20, y), name, fill=_FG, font=small)
        x += 20 + int(draw.textlength(name, font=small)) + 18
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()
