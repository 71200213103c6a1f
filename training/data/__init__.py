"""Training data sources with real annotations.

- :mod:`.coca` — the COCA set: gated scans with OsiriX calcium ROIs (→ HU volume + per-artery label
  volume), non-gated scans with expert per-artery Agatston (``scores.xlsx``).
- :mod:`.coca_rois` — COCA's OsiriX plist ROIs and the polygon rasterisation that reproduces them.
- :mod:`.nongated_scores` — the non-gated ``scores.xlsx`` sheet.
- :mod:`.mask_folders` — a site's own DICOM series with ``.npy``/``.npz``/DICOM SEG label files.

Submodules are imported on use (``from cacstream.training.data.coca import load_gated_patient``) so
that importing this package stays cheap.
"""
