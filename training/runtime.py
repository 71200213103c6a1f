"""What the three trainers share: device and precision, seeding, progress bars, case loading and the
patient split, run-folder bookkeeping (run config, resume compatibility, the finished run's record).

DDP-ready: rank / world size come from ``torch.distributed`` when a process group is initialised
(``torchrun``); only rank 0 writes files and draws progress bars.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from cacstream.training.config import DataConfig, RuntimeConfig, config_to_dict
from cacstream.training.datasets.cases import Case
from cacstream.training.datasets.sources import describe_source, iter_source
from cacstream.training.datasets.splits import Split, assert_disjoint, split_patients
from torch import nn

RUN_CONFIG_FILE = "config.json"
RUN_RECORD_FILE = "run.json"
SPLIT_FILE = "split.json"
MODEL_FILE = "model.safetensors"


# ------------------------------------------------------------------------------------ device/precision


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device is {spec!r} but no CUDA device is available")
    return dev


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16/fp16 autocast on the device, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise RuntimeError("precision fp16 needs a CUDA device; use bf16 on CPUs")
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (as DINO's use_fp16); bf16 and fp32 need none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    return torch.compile(model) if enabled else model  # type: ignore[return-value]


@contextlib.contextmanager
def runtime_scope(rt: RuntimeConfig) -> Iterator[torch.device]:
    """Select the device and apply ``threads`` for the duration of a training run (restored after)."""
    before = torch.get_num_threads()
    if rt.threads > 0:
        torch.set_num_threads(rt.threads)
    try:
        yield select_device(rt.device)
    finally:
        torch.set_num_threads(before)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's global torch RNG (dropout, drop-path): a resumed epoch draws the same."""
    return (seed * 1_000_033 + epoch * 7_919 + 1) % (2**63 - 1)


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return dist_info()[0] == 0


@dataclass
class TrainResult:
    """How a trainer invocation ended: ``finished`` (all epochs or early stop) or ``paused``
    (``stop_after_epochs`` reached; resume with ``--resume``)."""

    run_dir: Path
    status: str
    epochs_done: int
    iterations: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- progress


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *a: object) -> None:
        return None

    def add_task(self, *a: object, **k: object) -> int:
        return 0

    def update(self, *a: object, **k: object) -> None:
        return None

    def advance(self, *a: object, **k: object) -> None:
        return None

    def remove_task(self, *a: object, **k: object) -> None:
        return None


def progress(quiet: bool = False) -> Any:
    """A rich progress display (bar, counts, elapsed, remaining, live metrics), or a silent stand-in."""
    if quiet or not is_main():
        return _NullProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )


# ------------------------------------------------------------------------------------------ data


@dataclass
class LoadedData:
    cases: list[Case]
    split: Split
    description: list[str]

    def cases_of(self, name: str) -> list[Case]:
        ids = set(self.split.of(name))
        return [c for c in self.cases if c.patient_id in ids]


def load_cases(data: DataConfig, quiet: bool = False) -> list[Case]:
    """Every case of every source, in config order; duplicate case ids are an error."""
    cases: list[Case] = []
    seen: dict[str, str] = {}
    with progress(quiet) as bar:
        task = bar.add_task("loading cases", total=None, info="")
        for src in data.sources:
            for case in iter_source(src):
                if case.case_id in seen:
                    raise ValueError(
                        f"case id {case.case_id!r} appears twice ({seen[case.case_id]} and {case.source})"
                    )
                seen[case.case_id] = case.source
                cases.append(case)
                bar.update(task, advance=1, info=case.case_id)
    return cases


def load_data(data: DataConfig, run_dir: Path | None = None, quiet: bool = False) -> LoadedData:
    """Load cases and split them by patient; the split is saved to ``run_dir/split.json``."""
    cases = load_cases(data, quiet)
    calcified: dict[str, bool] = {}
    for c in cases:
        calcified[c.patient_id] = calcified.get(c.patient_id, False) or bool(c.calcified_slices().any())
    split = split_patients(calcified.keys(), data.split, calcified)
    assert_disjoint(split)
    unknown = sorted(set(split.train + split.val + split.test) - set(calcified))
    if unknown and split.method == "explicit":
        raise ValueError(f"split lists name patients that no source provides: {unknown[:10]}")
    if run_dir is not None and is_main():
        split.save(Path(run_dir) / SPLIT_FILE)
    return LoadedData(cases, split, [describe_source(s) for s in data.sources])


def data_summary(loaded: LoadedData) -> dict[str, Any]:
    """Counts per split (patients, series, slices, calcified slices) for run records."""
    out: dict[str, Any] = {"sources": loaded.description, "split_method": loaded.split.method}
    for name in ("train", "val", "test"):
        cs = loaded.cases_of(name)
        out[name] = {
            "patients": len(set(c.patient_id for c in cs)),
            "series": len(cs),
            "labelled_series": sum(c.labelled for c in cs),
            "slices": int(sum(c.n_slices for c in cs)),
            "calcified_slices": int(sum(int(c.calcified_slices().sum()) for c in cs)),
        }
    return out


# ------------------------------------------------------------------------------------- run records


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def environment() -> dict[str, Any]:
    import numpy

    from cacstream import __version__

    return {
        "cacstream": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


#: Runtime fields that may change between an interrupted run and its resumption.
_RESUME_FREE = ("device", "compile", "threads", "num_workers")


def resume_key(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(cfg_dict))
    for k in _RESUME_FREE:
        d.get("runtime", {}).pop(k, None)
    return d


def write_run_config(
    run_dir: Path, stage: str, cfg: Any, command: Sequence[str] | None, resume: bool
) -> None:
    """Save the stage config (first run) or check it matches the checkpoint's (resume)."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    current = config_to_dict(cfg)
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("stage") != stage:
            raise ValueError(f"{path}: this run folder holds a {saved.get('stage')!r} run, not {stage!r}")
        if resume_key(saved.get("config", {})) != resume_key(current):
            raise ValueError(
                f"{path}: the config differs from the one the checkpoint was trained with; "
                "resume with the same config (only runtime.device/compile/threads/num_workers "
                "may change) or start a new run folder"
            )
        return
    write_json(
        path,
        {
            "stage": stage,
            "config": current,
            "command": list(command or []),
            "environment": environment(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


def begin_run(run_dir: Path, stage: str, cfg: Any, command: Sequence[str] | None, resume: bool) -> None:
    """Every trainer starts here: never clobber a run folder's checkpoint, never "resume" from nothing,
    and record (or, on resume, check) the stage config."""
    from cacstream.training.checkpoint import has_checkpoint

    if resume and not has_checkpoint(run_dir):
        raise FileNotFoundError(f"{run_dir}: --resume given but there is no checkpoint to resume from")
    if not resume and has_checkpoint(run_dir):
        raise FileExistsError(f"{run_dir}: holds a checkpoint already; pass --resume or choose another --out")
    if is_main():
        write_run_config(run_dir, stage, cfg, command, resume)


def run_stage(body: Callable[..., "TrainResult"], cfg: Any, run_dir: Path, **options: Any) -> "TrainResult":
    """Run a trainer's ``body(cfg, run_dir, device, **options)`` inside its runtime scope (threads,
    device, process group), so every stage sets up and tears down the same way."""
    with runtime_scope(cfg.runtime) as device:
        return body(cfg, Path(run_dir), device, **options)


def iterate(loader: Any) -> Iterator[Any]:
    yield from loader
