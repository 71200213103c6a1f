"""Resumable training checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint is two files in the run folder:

* ``checkpoint.safetensors`` — model / optimizer-state / RNG tensors under namespaced keys
  (``student/...``, ``optimizer/state/<i>/exp_avg``, ``rng/torch``);
* ``checkpoint.json`` — epoch, iteration, optimizer param groups, scalar state, the size and SHA-256 of
  the tensor file. It is written last (temp file + rename), so its presence marks a complete
  checkpoint and a crash mid-write leaves the previous one usable.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cacstream.engine.file_hash import file_sha256
from safetensors.torch import load_file, save_file
from torch import Tensor

TENSORS_FILE = "checkpoint.safetensors"
META_FILE = "checkpoint.json"
FORMAT = "cacstream-checkpoint/1"


class CheckpointError(RuntimeError):
    pass


def prefixed(prefix: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``{prefix/key: tensor}``, detached, contiguous and on the CPU (safetensors' requirements)."""
    return {f"{prefix}/{k}": v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    p = f"{prefix}/"
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


def optimizer_to_tensors(
    opt: torch.optim.Optimizer, prefix: str = "optimizer"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors and JSON (param groups and non-tensor state)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{prefix}/state/{idx}/{k}"] = v.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    groups = json.loads(
        json.dumps(sd["param_groups"], default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    )
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any], prefix: str = "optimizer"
) -> None:
    state: dict[int, dict[str, Any]] = {}
    p = f"{prefix}/state/"
    for k, v in tensors.items():
        if k.startswith(p):
            idx, name = k[len(p) :].split("/", 1)
            state.setdefault(int(idx), {})[name] = v
    for idx, vals in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(vals)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_to_tensors() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """torch (CPU and CUDA), numpy's legacy global and Python's RNG states."""
    t = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            t[f"rng/cuda/{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": json.loads(json.dumps(random.getstate(), default=list)),
    }
    return t, meta


def rng_from_tensors(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"])
    if torch.cuda.is_available():
        states = [
            tensors[f"rng/cuda/{i}"] for i in range(torch.cuda.device_count()) if f"rng/cuda/{i}" in tensors
        ]
        if states:
            torch.cuda.set_rng_state_all(states)
    if "numpy" in meta:
        n = meta["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    if "python" in meta:
        py = meta["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(run_dir: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write the checkpoint pair atomically (tensors first, JSON last)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp_t = run_dir / (TENSORS_FILE + ".tmp")
    save_file(tensors, str(tmp_t), metadata={"format": FORMAT})
    os.replace(tmp_t, run_dir / TENSORS_FILE)
    full = dict(meta)
    full["format"] = FORMAT
    full["tensors_sha256"] = file_sha256(run_dir / TENSORS_FILE)
    tmp_j = run_dir / (META_FILE + ".tmp")
    tmp_j.write_text(json.dumps(full, indent=1))
    os.replace(tmp_j, run_dir / META_FILE)
    return run_dir / META_FILE


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / META_FILE).is_file() and (Path(run_dir) / TENSORS_FILE).is_file()


def load_checkpoint(run_dir: Path, map_location: str = "cpu") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; errors name the file and what is wrong."""
    run_dir = Path(run_dir)
    mp, tp = run_dir / META_FILE, run_dir / TENSORS_FILE
    if not mp.is_file() or not tp.is_file():
        raise CheckpointError(
            f"{run_dir}: no checkpoint to resume from ({META_FILE} + {TENSORS_FILE} needed)"
        )
    try:
        meta = json.loads(mp.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mp}: unreadable ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{mp}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("tensors_sha256") != file_sha256(tp):
        raise CheckpointError(f"{tp}: contents do not match {mp} (interrupted write or edited file)")
    return load_file(str(tp), device=map_location), meta
