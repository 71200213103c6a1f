"""The one file-hash helper: ONNX files, TensorRT plans, safetensors and calibration arrays are
identified by their sha256 (caches are keyed on it, records carry it)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (ONNX and plan files reach hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
