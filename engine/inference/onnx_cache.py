"""ONNX files made on first use, for weights folders that ship safetensors only.

The packaged default weights (``engine/weights/default``) keep the repository small: they ship
``config.json`` + fp16-stored safetensors, and their ``config.json`` says ``"onnx_on_first_use": true``
in each model section. ONNX Runtime (what ``--backend auto`` picks on a CPU) needs ONNX files; the
first time one is asked for and is missing, this module exports it from the safetensors with the
training code's exporter (``cacstream.training.export``: fixed input size, dynamic batch, opset 18),
checks ONNX Runtime against PyTorch on test inputs (the same check ``cacstream export`` makes), and
writes it atomically into the weights' engine folder (``$CACSTREAM_ENGINES/<name>`` or
``<weights>/engines``; a per-user cache when that is not writable). Afterwards it is an ordinary file.

A generated file is only reused while it belongs to the safetensors it was made from: a JSON sidecar
records the weights file's SHA-256, and a mismatch (new weights in the same folder) regenerates it.
Exporting ViT-Tiny/16 + U-Net-16 takes ~30 s once on a 2-core CPU.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from cacstream.engine.file_hash import file_sha256

log = logging.getLogger(__name__)

#: config.json key (per model section) that allows generating the fp32 ONNX file on first use.
FLAG = "onnx_on_first_use"
_LOCK = threading.Lock()
#: What the generated graphs compute; a file made by an older version is regenerated. 2: the slice
#: filter of a ``patch_max`` model also outputs its patch logits (ServedSliceFilter).
GRAPH_VERSION = 2


class OnnxCacheError(RuntimeError):
    """The ONNX file could not be generated (message says which file and why)."""


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cacstream" / "onnx"


def candidate_dirs(weights_dir: Path, engine_dir: Path) -> list[Path]:
    """Where a generated file may live, in the order they are tried (engine folder first)."""
    weights_id = Path(weights_dir).resolve().name
    return [Path(engine_dir), user_cache_dir() / weights_id]


def _sidecar(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".json")


def cached_onnx(spec: Any, dirs: list[Path]) -> Path | None:
    """A generated fp32 ONNX file of ``spec`` that is still current, or None."""
    weights = Path(spec.directory) / str(spec.config.get("weights", ""))
    if not weights.is_file():
        return None
    digest = None
    for d in dirs:
        p = Path(d) / spec.onnx_name("fp32")
        side = _sidecar(p)
        if p.is_file() and side.is_file():
            try:
                meta = json.loads(side.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            digest = digest or file_sha256(weights)
            if meta.get("weights_sha256") == digest and meta.get("graph") == GRAPH_VERSION:
                return p
    return None


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def generate_onnx(spec: Any, dirs: list[Path], tolerance: float = 1e-3) -> Path:
    """Export the model of ``spec`` (a weights_spec.ModelSpec) to fp32 ONNX in the first writable
    folder of ``dirs``, checked against PyTorch; returns its path."""
    import torch

    from cacstream.training.export import check_inputs, check_onnx, export_onnx
    from cacstream.training.weights import FILTER_KEY, WeightsError, load_weights

    weights = Path(spec.directory) / str(spec.config.get("weights", ""))
    part = FILTER_KEY if spec.role == "filter" else "segmenter"
    try:
        bundle = load_weights(spec.directory, parts=(part,))
    except WeightsError as e:
        raise OnnxCacheError(f"cannot build the {spec.section} to export it: {e}") from None
    loaded = bundle.slice_filter if spec.role == "filter" else bundle.segmenter
    assert loaded is not None
    model = loaded.model.eval()
    if spec.role == "filter":
        from cacstream.training.models.classifier import served_filter

        model = served_filter(model)  # slice logit + patch logits (segmentation regions)
    target = next((Path(d) for d in dirs if _writable(Path(d))), None)
    if target is None:
        raise OnnxCacheError(f"no writable folder for the {spec.section} ONNX file (tried {', '.join(map(str, dirs))})")
    final = target / spec.onnx_name("fp32")
    size = int(spec.input_shape[-1])
    log.warning("%s: generating %s from %s (first use; once)", spec.section, final, weights.name)
    fd, tmp_name = tempfile.mkstemp(dir=target, prefix=f".{final.stem}-", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        threads = torch.get_num_threads()
        export_onnx(model, size, tmp)
        check = check_onnx(model, tmp, check_inputs(size), tolerance)
        torch.set_num_threads(threads)
        if not check.passed:
            raise OnnxCacheError(f"{final}: ONNX Runtime differs from PyTorch by {check.max_abs_diff:.3g} "
                                 f"(tolerance {tolerance:.3g}); not used")
        meta = {"generated_from": weights.name, "weights_sha256": file_sha256(weights), "graph": GRAPH_VERSION,
                "onnx_check": check.to_dict(),
                "torch": torch.__version__}
        os.replace(tmp, final)
        side = _sidecar(final)
        side_tmp = side.with_name(side.name + f".{os.getpid()}.tmp")
        side_tmp.write_text(json.dumps(meta, indent=1))
        os.replace(side_tmp, side)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def ensure_onnx(spec: Any, engine_dir: Path) -> Path | None:
    """The fp32 ONNX file of ``spec``, generated on first use when its section allows it
    (``"onnx_on_first_use": true``); None when it does not (the caller reports the missing file)."""
    if not spec.config.get(FLAG):
        return None
    dirs = candidate_dirs(spec.directory, engine_dir)
    with _LOCK:
        found = cached_onnx(spec, dirs)
        if found is not None:
            return found
        return generate_onnx(spec, dirs)
