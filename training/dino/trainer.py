"""DINO-LG pretraining loop (facebookresearch/dino ``main_dino.py`` + the paper's guided local crops).

Per iteration, exactly as DINO: learning rate and weight decay from per-iteration cosine schedules
(weight decay only on the regularised group: no decay on biases and norms), teacher on the 2 global
crops, student on all crops, DINO loss, per-parameter gradient clipping, the head's last layer frozen
during the first ``freeze_last_layer`` epochs, AdamW step, EMA teacher update with the cosine momentum.

Outputs in the run folder: ``config.json`` (the stage config), ``split.json``, ``metrics.json`` +
``curves.png`` (per epoch), ``checkpoint.safetensors`` + ``checkpoint.json`` (resumable), and at the end
``model.safetensors`` (the teacher backbone, which DINO evaluates) + ``run.json`` (what the classifier
stage needs: architecture, preprocessing, data, metrics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from cacstream.training.checkpoint import (
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    prefixed,
    rng_from_tensors,
    rng_to_tensors,
    save_checkpoint,
    unprefixed,
)
from cacstream.training.config import DinoConfig, config_to_dict
from cacstream.training.datasets.slices import DinoSliceDataset, select_slices
from cacstream.training.dino.loss import DINOLoss
from cacstream.training.dino.multicrop import MultiCropAugmentation, collate_multicrop
from cacstream.training.dino.schedules import cosine_scheduler
from cacstream.training.metrics_log import MetricsLog
from cacstream.training.models.dino_head import DINOHead, MultiCropWrapper
from cacstream.training.models.registry import create_model
from cacstream.training.models.vit import VisionTransformer
from cacstream.training.runtime import (
    MODEL_FILE,
    RUN_RECORD_FILE,
    TrainResult,
    autocast,
    begin_run,
    data_summary,
    dist_info,
    epoch_seed,
    grad_scaler,
    is_main,
    load_data,
    progress,
    run_stage,
    write_json,
)
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader


def get_params_groups(model: nn.Module) -> list[dict[str, Any]]:
    """DINO's groups: weights are regularised, biases and 1-D (norm) parameters are not."""
    regularized, not_regularized = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or p.ndim == 1 else regularized).append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """DINO's per-parameter clipping: each gradient's L2 norm is capped at ``clip``."""
    norms = []
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.detach().norm(2)
            norms.append(float(norm))
            coef = clip / (norm + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)
    return norms


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


@torch.no_grad()
def ema_update(student: nn.Module, teacher: nn.Module, m: float) -> None:
    for ps, pt in zip(student.parameters(), teacher.parameters()):
        pt.mul_(m).add_(ps.detach(), alpha=1 - m)


def build_backbone(cfg: DinoConfig, drop_path_rate: float = 0.0) -> VisionTransformer:
    kw = dict(cfg.arch_kwargs)
    kw.setdefault("img_size", cfg.preprocess.input_size)
    if kw["img_size"] != cfg.preprocess.input_size:
        raise ValueError(
            f"arch_kwargs.img_size {kw['img_size']} != preprocess.input_size "
            f"{cfg.preprocess.input_size}: the backbone is built for the serving input size"
        )
    kw["drop_path_rate"] = drop_path_rate
    model = create_model(cfg.arch, **kw)
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{cfg.arch!r} is not a ViT backbone")
    model.arch_kwargs = {k: v for k, v in kw.items() if k != "drop_path_rate"}  # type: ignore[assignment]
    return model


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """This process's shuffled, drop-last batches of the epoch (same on every resume)."""
    rank, world = dist_info()
    g = torch.Generator()
    g.manual_seed(epoch_seed(seed, epoch) + 17)
    order = torch.randperm(n, generator=g).tolist()
    per_step = batch_size * world
    steps = n // per_step
    return [
        order[s * per_step + rank * batch_size : s * per_step + (rank + 1) * batch_size] for s in range(steps)
    ]


def train_dino(
    cfg: DinoConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    quiet: bool = False,
    command: Sequence[str] | None = None,
) -> TrainResult:
    """Run (or resume) DINO-LG pretraining into ``run_dir``."""
    return run_stage(
        _train_dino, cfg, run_dir, resume=resume, stop_after_epochs=stop_after_epochs, quiet=quiet, command=command
    )


def _train_dino(
    cfg: DinoConfig,
    run_dir: Path,
    device: torch.device,
    *,
    resume: bool,
    stop_after_epochs: int | None,
    quiet: bool,
    command: Sequence[str] | None,
) -> TrainResult:
    rank, world = dist_info()
    begin_run(run_dir, "dino", cfg, command, resume)
    seed = cfg.runtime.seed
    torch.manual_seed(seed)

    # ---------------------------------------------------------------- data
    loaded = load_data(cfg.data, run_dir, quiet)
    train_cases = loaded.cases_of("train")
    if not train_cases:
        raise ValueError("the training split has no cases")
    refs = select_slices(train_cases, cfg.data, seed=seed)
    patch = build_backbone(cfg).patch_size
    if cfg.multicrop.local_crop_size % patch or cfg.preprocess.input_size % patch:
        raise ValueError(
            f"input_size {cfg.preprocess.input_size} and local_crop_size "
            f"{cfg.multicrop.local_crop_size} must be multiples of the patch size {patch}"
        )
    augmentation = MultiCropAugmentation(cfg.multicrop, cfg.augment, cfg.preprocess.input_size)
    dataset = DinoSliceDataset(train_cases, refs, cfg.preprocess, augmentation, seed)
    niter = len(dataset) // (cfg.batch_size * world)
    if niter < 1:
        raise ValueError(
            f"{len(dataset)} training slices are fewer than one batch of {cfg.batch_size * world}"
        )

    # ---------------------------------------------------------------- models
    student_bb = build_backbone(cfg, cfg.drop_path_rate)
    teacher_bb = build_backbone(cfg, 0.0)
    embed = student_bb.embed_dim
    student = MultiCropWrapper(
        student_bb,
        DINOHead(
            embed,
            cfg.out_dim,
            norm_last_layer=cfg.norm_last_layer,
            nlayers=cfg.head_nlayers,
            hidden_dim=cfg.head_hidden_dim,
            bottleneck_dim=cfg.head_bottleneck_dim,
        ),
    ).to(device)
    teacher = MultiCropWrapper(
        teacher_bb,
        DINOHead(
            embed,
            cfg.out_dim,
            nlayers=cfg.head_nlayers,
            hidden_dim=cfg.head_hidden_dim,
            bottleneck_dim=cfg.head_bottleneck_dim,
        ),
    ).to(device)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    if cfg.runtime.compile:
        student_bb.compile()
        teacher_bb.compile()
    student_ddp: nn.Module = student
    if world > 1:
        student_ddp = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )

    dino_loss = DINOLoss(
        cfg.out_dim,
        cfg.warmup_teacher_temp,
        cfg.teacher_temp,
        cfg.warmup_teacher_temp_epochs,
        cfg.epochs,
        cfg.student_temp,
        cfg.center_momentum,
    ).to(device)
    optimizer = torch.optim.AdamW(get_params_groups(student))
    scaler = grad_scaler(device, cfg.runtime.precision)
    lr_schedule = cosine_scheduler(
        cfg.lr * cfg.batch_size * world / 256.0,
        cfg.min_lr,
        cfg.epochs,
        niter,
        warmup_epochs=cfg.warmup_epochs,
    )
    wd_schedule = cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, niter)
    momentum_schedule = cosine_scheduler(cfg.momentum_teacher, 1.0, cfg.epochs, niter)

    # ---------------------------------------------------------------- resume
    log = MetricsLog(run_dir, f"DINO-LG {cfg.arch} (RLC {cfg.multicrop.rlc}, GLC {cfg.multicrop.glc})")
    start_epoch = 0
    if resume:
        tensors, meta = load_checkpoint(run_dir, map_location="cpu")
        if meta.get("stage") != "dino":
            raise ValueError(f"{run_dir}: checkpoint is for stage {meta.get('stage')!r}, not dino")
        if meta.get("niter") != niter:
            raise ValueError(
                f"{run_dir}: the data gives {niter} iterations per epoch, the checkpoint had "
                f"{meta.get('niter')}: the training data changed"
            )
        student.load_state_dict(unprefixed("student", tensors))
        teacher.load_state_dict(unprefixed("teacher", tensors))
        dino_loss.center.copy_(tensors["loss/center"].to(device))
        optimizer_from_tensors(optimizer, {k: v.to(device) for k, v in tensors.items()}, meta["optimizer"])
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        rng_from_tensors(tensors, meta.get("rng", {}))
        start_epoch = int(meta["epoch"])
        log.truncate(start_epoch)

    # ---------------------------------------------------------------- train
    ran = 0
    status = "finished"
    it = start_epoch * niter
    with progress(quiet) as bar:
        ep_task = bar.add_task("DINO-LG epochs", total=cfg.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch, cfg.epochs):
            if stop_after_epochs is not None and ran >= stop_after_epochs:
                status = "paused"
                break
            torch.manual_seed(epoch_seed(seed, epoch))
            dataset.set_epoch(epoch)
            loader = DataLoader(
                dataset,
                batch_sampler=_batches(len(dataset), cfg.batch_size, seed, epoch),
                collate_fn=collate_multicrop,
                num_workers=cfg.runtime.num_workers,
                pin_memory=device.type == "cuda",
            )
            student.train()
            teacher.train()
            t0 = time.perf_counter()
            losses: list[float] = []
            entropies: list[float] = []
            n_local = n_guided = 0
            it_task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=niter, info="")
            for batch in loader:
                for i, group in enumerate(optimizer.param_groups):
                    group["lr"] = float(lr_schedule[it])
                    if i == 0:
                        group["weight_decay"] = float(wd_schedule[it])
                batch = batch.to(device, non_blocking=True)
                b2 = batch.globals.shape[0]
                with autocast(device, cfg.runtime.precision):
                    with torch.no_grad():
                        teacher_out = teacher(batch.globals)
                    student_out = student_ddp([batch.globals, batch.locals])
                    loss = dino_loss(
                        student_out[:b2], student_out[b2:], batch.local_owner, teacher_out, epoch
                    )
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"DINO loss is {loss.item()} at epoch {epoch}, iteration {it}; "
                        "lower lr, raise clip_grad or use fp32"
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    if cfg.clip_grad:
                        clip_gradients(student, cfg.clip_grad)
                    cancel_gradients_last_layer(epoch, student, cfg.freeze_last_layer)
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    if cfg.clip_grad:
                        scaler.unscale_(optimizer)
                        clip_gradients(student, cfg.clip_grad)
                    cancel_gradients_last_layer(epoch, student, cfg.freeze_last_layer)
                    scaler.step(optimizer)
                    scaler.update()
                ema_update(student, teacher, float(momentum_schedule[it]))
                losses.append(loss.item())
                entropies.append(dino_loss.last_stats["teacher_entropy"])
                n_local += batch.locals.shape[0]
                n_guided += batch.n_guided
                it += 1
                bar.update(it_task, advance=1, info=f"loss {losses[-1]:.4f}")
            bar.remove_task(it_task)
            elapsed = time.perf_counter() - t0
            ran += 1
            record = {
                "epoch": epoch,
                "train_loss": sum(losses) / len(losses),
                "train_loss_last": losses[-1],
                "lr": float(lr_schedule[it - 1]),
                "weight_decay": float(wd_schedule[it - 1]),
                "teacher_momentum": float(momentum_schedule[it - 1]),
                "teacher_temp": dino_loss.teacher_temp(epoch),
                "teacher_entropy": sum(entropies) / len(entropies),
                "guided_crop_fraction": n_guided / max(n_local, 1),
                "iterations": it,
                "slices_per_s": niter * cfg.batch_size / elapsed,
                "time_s": elapsed,
            }
            if is_main():
                log.append(record)
                last = epoch + 1 == cfg.epochs
                stopping = stop_after_epochs is not None and ran >= stop_after_epochs
                if last or stopping or (epoch + 1) % max(cfg.checkpoint_every, 1) == 0:
                    _save(run_dir, epoch + 1, it, niter, student, teacher, dino_loss, optimizer, scaler)
            bar.update(ep_task, advance=1, info=f"loss {record['train_loss']:.4f}")

    if is_main():
        log.finish()
    if status == "finished" and is_main():
        save_file(
            prefixed_model(teacher.backbone),
            str(run_dir / MODEL_FILE),
            metadata={"format": "cacstream-backbone/1"},
        )
        write_json(
            run_dir / RUN_RECORD_FILE,
            {
                "stage": "dino",
                "finished": True,
                "arch": cfg.arch,
                "arch_kwargs": dict(teacher.backbone.arch_kwargs),
                "embed_dim": teacher.backbone.embed_dim,
                "patch_size": teacher.backbone.patch_size,
                "preprocess": cfg.preprocess.to_dict(),
                "weights": MODEL_FILE,
                "weights_are": "teacher backbone",
                "multicrop": config_to_dict(cfg.multicrop),
                "epochs": cfg.epochs,
                "iterations": it,
                "data": data_summary(loaded),
                "metrics": log.records[-1] if log.records else {},
                "command": list(command or []),
            },
        )
    return TrainResult(run_dir, status, len(log.records), it, list(log.records))


def prefixed_model(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _save(
    run_dir: Path,
    next_epoch: int,
    it: int,
    niter: int,
    student: nn.Module,
    teacher: nn.Module,
    loss: DINOLoss,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
) -> None:
    tensors = {
        **prefixed("student", student.state_dict()),
        **prefixed("teacher", teacher.state_dict()),
        "loss/center": loss.center.detach().cpu().contiguous(),
    }
    opt_t, opt_meta = optimizer_to_tensors(optimizer)
    rng_t, rng_meta = rng_to_tensors()
    tensors.update(opt_t)
    tensors.update(rng_t)
    save_checkpoint(
        run_dir,
        tensors,
        {
            "stage": "dino",
            "epoch": next_epoch,
            "iteration": it,
            "niter": niter,
            "optimizer": opt_meta,
            "rng": rng_meta,
            "scaler": scaler.state_dict() if scaler is not None else None,
        },
    )
