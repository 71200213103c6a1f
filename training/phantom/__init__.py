"""Synthetic chest / cardiac CT with known coronary calcium (training, tests, QA, benchmarks).

Public API (docs/CONTRACTS.md, "Phantom API")::

    PhantomConfig                                   # what to generate (frozen dataclass)
    make_phantom(seed, config=None) -> PhantomCase  # hu, labels, other_calcium, geometry, acquisition, truth
    write_series(case, out_dir) -> list[Path]       # DICOM CT files + truth.json (+ labels.npz)

See docs/phantom.md for the model and how it compares with the real COCA scans.
"""

from cacstream.training.phantom.config import KINDS, PhantomConfig
from cacstream.training.phantom.generate import PhantomCase, make_phantom, resolve_kind, series_folder_name, write_series

__all__ = ["KINDS", "PhantomCase", "PhantomConfig", "make_phantom", "resolve_kind", "series_folder_name", "write_series"]
