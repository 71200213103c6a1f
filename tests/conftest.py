"""Shared fixtures: where the real COCA samples are, and whether a GPU is present.

Sample data is never copied into the repository: tests read it from ``../shared/data`` beside the
checkout, or from ``$CACSTREAM_DATA``, and skip with a clear reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """Folder holding ``coca-sample/`` (env ``CACSTREAM_DATA`` wins over ``../shared/data``)."""
    env = os.environ.get("CACSTREAM_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def coca_root() -> Path:
    root = data_root() / "coca-sample"
    if not root.is_dir():
        pytest.skip(f"COCA samples not found at {root} (set CACSTREAM_DATA to the folder holding coca-sample/)")
    return root


def _cuda_available() -> bool:
    try:
        import cupy  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        pass
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GPU-marked tests on machines without a CUDA device, with the reason spelled out."""
    gpu = _cuda_available()
    try:
        import tensorrt  # noqa: F401

        trt = gpu
    except Exception:
        trt = False
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU on this machine (GPU test)")
    skip_trt = pytest.mark.skip(reason="TensorRT or a CUDA GPU is missing on this machine")
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip_gpu)
        if "tensorrt" in item.keywords and not trt:
            item.add_marker(skip_trt)
