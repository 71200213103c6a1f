"""The CUDA sources as NVRTC sees them, without importing CuPy (shared by ``cupy_backend`` and the
compile tests, so the CPU test suite compiles exactly what runs on a GPU).

CuPy's on-disk kernel cache is keyed on the source text and the options only, not on included
files, so :func:`source_text` starts the text with a digest of the headers: editing
``common/preprocess_math.h`` or ``cuda/common.cuh`` recompiles.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_HERE = Path(__file__).resolve().parent
CUDA_DIR = _HERE / "cuda"
COMMON_DIR = _HERE / "common"
HEADERS = (COMMON_DIR / "preprocess_math.h", CUDA_DIR / "common.cuh")

#: NVRTC options: C++17, no FMA contraction (the header's __f*_rn intrinsics already forbid it),
#: include paths of both header folders (CuPy compiles the text under a temporary file name, so
#: even ``#include "common.cuh"`` needs its folder on the path).
NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17", "--fmad=false", f"-I{CUDA_DIR}", f"-I{COMMON_DIR}")

#: Every kernel the Python backend launches, per source file.
KERNELS: dict[str, tuple[str, ...]] = {
    "stats.cu": ("cac_stats_init", "cac_stats_i16", "cac_stats_u16", "cac_stats_f32", "cac_stats_finalize"),
    "resample.cu": (
        "cac_taps",
        "cac_to_hu_i16", "cac_to_hu_u16", "cac_to_hu_f32",
        "cac_normalise",
        "cac_resize_f32",
        "cac_preprocess_i16_f16", "cac_preprocess_u16_f16", "cac_preprocess_f32_f16",
        "cac_preprocess_i16_f32", "cac_preprocess_u16_f32", "cac_preprocess_f32_f32",
    ),
}


def source_text(name: str) -> str:
    """The text of ``cuda/<name>`` as handed to NVRTC (header digest first)."""
    if name not in KERNELS:
        raise ValueError(f"unknown CUDA source {name!r}; known: {sorted(KERNELS)}")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in HEADERS)).hexdigest()
    return f"// headers sha256 {digest}\n" + (CUDA_DIR / name).read_text()
