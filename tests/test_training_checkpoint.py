"""Checkpoints (safetensors + JSON, no pickles) and the per-epoch metrics log."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from cacstream.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    prefixed,
    rng_from_tensors,
    rng_to_tensors,
    save_checkpoint,
    unprefixed,
)
from cacstream.training.metrics_log import MetricsLog


def _model_and_opt() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.AdamW(
        [{"params": [m[0].weight]}, {"params": [m[0].bias, *m[1].parameters()], "weight_decay": 0.0}],
        lr=1e-2,
        betas=(0.9, 0.95),
    )
    return m, opt


def _step(m: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    loss = m(torch.randn(8, 4, generator=g)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_resumed_optimizer_continues_bit_for_bit(tmp_path: Path) -> None:
    m, opt = _model_and_opt()
    for s in range(3):
        _step(m, opt, s)
    t_opt, meta_opt = optimizer_to_tensors(opt)
    save_checkpoint(
        tmp_path, {**prefixed("model", m.state_dict()), **t_opt}, {"epoch": 3, "optimizer": meta_opt}
    )
    for s in range(3, 6):
        _step(m, opt, s)
    tensors, meta = load_checkpoint(tmp_path)
    m2, opt2 = _model_and_opt()
    m2.load_state_dict(unprefixed("model", tensors))
    optimizer_from_tensors(opt2, tensors, meta["optimizer"])
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95) and opt2.param_groups[1]["weight_decay"] == 0.0
    for s in range(3, 6):
        _step(m2, opt2, s)
    for a, b in zip(m.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_pickles_and_integrity_check(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, {"x": torch.arange(4.0)}, {"epoch": 1})
    raw = (tmp_path / "checkpoint.safetensors").read_bytes()
    assert not raw.startswith(b"\x80") and b"cacstream-checkpoint" in raw[:400]
    with pytest.raises(Exception):
        pickle.loads(raw)
    json.loads((tmp_path / "checkpoint.json").read_text())
    # a tensor file that does not match its JSON is refused
    save_checkpoint(tmp_path / "other", {"x": torch.zeros(4)}, {"epoch": 1})
    (tmp_path / "checkpoint.safetensors").write_bytes(
        (tmp_path / "other" / "checkpoint.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_rng_state_round_trip() -> None:
    t, meta = rng_to_tensors()
    a = (torch.rand(3), np.random.rand(3))
    rng_from_tensors(t, json.loads(json.dumps(meta)))
    b = (torch.rand(3), np.random.rand(3))
    torch.testing.assert_close(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_metrics_log_resume_truncates_and_plots(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, "test run")
    for e in range(3):
        log.append(
            {"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 2.0 / (e + 1), "lr": 0.1, "time_s": 1.0}
        )
    assert not (tmp_path / "curves.png").exists()  # plots are throttled (plot_every_s) ...
    log.finish()
    assert (tmp_path / "curves.png").stat().st_size > 1000  # ... and always drawn at the end
    again = MetricsLog(tmp_path, "test run")
    assert again.series("train_loss") == [1.0, 0.5, 1 / 3]
    again.truncate(2)
    again.append({"epoch": 2, "train_loss": 0.25, "val_loss": float("nan")})
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in data["epochs"]] == [0, 1, 2]
    assert data["epochs"][2]["val_loss"] is None  # NaN is not JSON
