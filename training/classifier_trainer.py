"""Slice classifier on frozen DINO-LG features (paper §3.3): one linear layer, weighted BCE (positive
weight = n_negative / n_positive of the training split, 9.0 in the paper), Adam 1e-4 with weight decay
1e-4, at most 10 epochs, early stopping on validation F1 with patience 3.

Then the operating threshold is chosen on the validation split for a target sensitivity (default 0.98):
the filter must not drop calcified slices, while a false positive only costs one segmenter pass. The
threshold, the validation and test metrics at it, and the feature read-out go into ``run.json`` and from
there into the weights' ``config.json``.

Without augmentation (the CPU default) the frozen backbone's features are computed once per split and
cached, so each epoch costs one pass of a linear layer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from cacstream.engine.inference.candidates import CandidateRule
from cacstream.kernels.config import PreprocessConfig
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
from cacstream.training.config import ClassifierConfig
from cacstream.training.datasets.slices import ClassifierSliceDataset, select_slices
from cacstream.training.datasets.splits import Split
from cacstream.training.metrics import binary_metrics, roc_auc, threshold_for_sensitivity
from cacstream.training.metrics_log import MetricsLog
from cacstream.training.models.classifier import (
    FeatureSpec,
    LinearHead,
    PatchMaxHead,
    SliceFilter,
    extract_features,
    features_and_patch_tokens,
    make_head,
)
from cacstream.training.models.registry import create_model
from cacstream.training.models.vit import VisionTransformer, load_pretrained
from cacstream.training.runtime import (
    MODEL_FILE,
    RUN_RECORD_FILE,
    SPLIT_FILE,
    TrainResult,
    autocast,
    begin_run,
    data_summary,
    epoch_seed,
    is_main,
    load_data,
    progress,
    run_stage,
    write_json,
)
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)


class RunError(ValueError):
    """A run folder that cannot be used as input of the next stage (message names the file)."""


def read_run_record(run_dir: Path, stage: str) -> dict[str, Any]:
    path = Path(run_dir) / RUN_RECORD_FILE
    if not path.is_file():
        raise RunError(f"{path}: not found — is {run_dir} a finished `cacstream train {stage}` run?")
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: unreadable ({e})") from None
    if rec.get("stage") != stage or not rec.get("finished"):
        raise RunError(
            f"{path}: a {rec.get('stage')!r} run (finished={rec.get('finished')}), "
            f"expected a finished {stage!r} run"
        )
    return rec


def load_backbone_run(run_dir: Path) -> tuple[VisionTransformer, PreprocessConfig, dict[str, Any]]:
    """The teacher backbone of a finished DINO run, its preprocessing and its run record."""
    rec = read_run_record(run_dir, "dino")
    model = create_model(rec["arch"], **rec.get("arch_kwargs", {}))
    if not isinstance(model, VisionTransformer):
        raise RunError(f"{run_dir}: {rec['arch']} is not a ViT")
    path = Path(run_dir) / rec.get("weights", MODEL_FILE)
    try:
        sd = load_file(str(path))
    except (OSError, Exception) as e:  # safetensors raises its own error type
        raise RunError(f"{path}: cannot read backbone weights ({e})") from None
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RunError(
            f"{path}: weights do not fit {rec['arch']} {rec.get('arch_kwargs')}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model, PreprocessConfig.from_dict(rec["preprocess"]), rec


def rebuild_backbone(
    backbone: VisionTransformer, preprocess: PreprocessConfig, rec: dict[str, Any], input_size: int, input_pool: int
) -> tuple[VisionTransformer, PreprocessConfig]:
    """The DINO backbone rebuilt for a served input of ``input_size`` behind an ``input_pool`` max-pool:
    the ViT is built at input_size / input_pool (position embeddings resampled at build time, so the
    exported graph is fixed) and the preprocessing serves ``input_size``."""
    size = input_size or preprocess.input_size
    if size % input_pool or (size // input_pool) % backbone.patch_size:
        raise RunError(
            f"input_size {size} / input_pool {input_pool} must be a whole multiple of the patch size "
            f"{backbone.patch_size}"
        )
    kwargs = {**rec.get("arch_kwargs", {}), "img_size": size // input_pool}
    model = create_model(rec["arch"], **kwargs)
    assert isinstance(model, VisionTransformer)
    load_pretrained(model, backbone.state_dict())
    return model, dataclasses.replace(preprocess, input_size=size)


@torch.no_grad()
def compute_features(
    backbone: VisionTransformer,
    dataset: ClassifierSliceDataset,
    spec: FeatureSpec,
    device: torch.device,
    precision: str,
    batch_size: int,
    bar: Any,
    label: str,
) -> tuple[Tensor, Tensor]:
    """Frozen features and targets of every slice of ``dataset`` (float32 on the CPU)."""
    backbone.eval()
    feats, targets = [], []
    task = bar.add_task(f"features {label}", total=len(dataset), info="")
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        with autocast(device, precision):
            f = extract_features(backbone, x.to(device), spec)
        feats.append(f.float().cpu())
        targets.append(y.float())
        bar.update(task, advance=len(y))
    bar.remove_task(task)
    dim = spec.dim(backbone.embed_dim)
    return (torch.cat(feats) if feats else torch.zeros(0, dim)), (
        torch.cat(targets) if targets else torch.zeros(0)
    )


def _clone(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def feature_stats(feats: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-feature mean and std (floored at ``eps``) of the training features."""
    return feats.mean(dim=0), feats.std(dim=0).clamp_min(eps)


def standardize(feats: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
    return (feats - stats[0]) / stats[1]


@torch.no_grad()
def fold_standardization(head: LinearHead, stats: tuple[Tensor, Tensor]) -> None:
    """Make ``head`` read raw features: w·(f − μ)/σ + b = (w/σ)·f + (b − (w/σ)·μ)."""
    mean, std = (t.to(head.linear.weight.device) for t in stats)
    w = head.linear.weight / std
    head.linear.bias.sub_((w * mean).sum(dim=1))
    head.linear.weight.copy_(w)


def _logits(head: LinearHead, feats: Tensor, device: torch.device, candidates: Tensor | None) -> Tensor:
    """Slice logits of cached features; gated by ``candidates`` (B, N) when the filter uses the gate."""
    head.eval()
    with torch.no_grad():
        if candidates is None:
            return head(feats.to(device)).float().cpu()
        assert isinstance(head, PatchMaxHead)
        return head(feats.to(device), candidates.to(device)).float().cpu()


def _evaluate(
    head: LinearHead, feats: Tensor, targets: Tensor, pos_weight: float, device: torch.device,
    candidates: Tensor | None = None,
) -> dict[str, float]:
    if not len(targets):
        return {}
    logits = _logits(head, feats, device, candidates)
    loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor(pos_weight))
    probs = torch.sigmoid(logits).numpy()
    m = binary_metrics(probs, targets.numpy(), 0.5)
    return {
        "loss": float(loss),
        "f1": m["f1"],
        "sensitivity": m["sensitivity"],
        "specificity": m["specificity"],
        "auc": roc_auc(probs, targets.numpy()),
    }


def _probs(head: LinearHead, feats: Tensor, device: torch.device, candidates: Tensor | None = None) -> np.ndarray:
    return torch.sigmoid(_logits(head, feats, device, candidates)).numpy()


def candidate_masks(dataset: ClassifierSliceDataset, rule: CandidateRule, grid: int) -> Tensor:
    """(N, grid²) candidate patches of every slice of ``dataset`` (the gate the engine applies)."""
    rows = [dataset.candidates_of(i, grid, rule) for i in range(len(dataset.refs))]
    return torch.stack(rows) if rows else torch.zeros(0, grid * grid)


def init_from_classifier(run: Path, backbone: VisionTransformer, head: LinearHead, spec: FeatureSpec,
                         preprocess: PreprocessConfig) -> None:
    """Load a finished fine-tuned classifier run's backbone and linear layer (``init_from``); its read-out
    and served input must be this run's."""
    rec = read_run_record(run, "classifier")
    mine = {"feature": spec.to_dict(), "input_size": preprocess.input_size,
            "window_hu": list(preprocess.window_hu) if preprocess.normalisation == "window" else None}
    theirs = {"feature": rec["feature"], "input_size": rec["preprocess"]["input_size"],
              "window_hu": rec["preprocess"].get("window_hu") if rec["preprocess"].get("normalisation") == "window"
              else None}
    if mine != theirs:
        raise RunError(f"init_from {run}: its read-out / input {theirs} differs from this run's {mine}")
    path = Path(run) / rec.get("weights", MODEL_FILE)
    try:
        model = SliceFilter(backbone, head, spec)
        missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    except Exception as e:  # safetensors raises its own error type; shape mismatches are RuntimeError
        raise RunError(f"init_from {path}: cannot load it into this filter ({e})") from None
    if missing or unexpected:
        raise RunError(f"init_from {path}: weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _split_overlap(dino_run: Path, split: Split) -> list[str]:
    """Classifier val/test patients that DINO trained on (self-supervised, but still seen)."""
    path = Path(dino_run) / SPLIT_FILE
    if not path.is_file():
        return []
    dino_train = set(Split.load(path).train)
    return sorted(dino_train & (set(split.val) | set(split.test)))


def train_classifier(
    cfg: ClassifierConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    quiet: bool = False,
    command: Sequence[str] | None = None,
) -> TrainResult:
    """Train (or resume) the linear slice classifier into ``run_dir``."""
    return run_stage(
        _train_classifier, cfg, run_dir, resume=resume, stop_after_epochs=stop_after_epochs, quiet=quiet, command=command
    )


def _train_classifier(
    cfg: ClassifierConfig,
    run_dir: Path,
    device: torch.device,
    *,
    resume: bool,
    stop_after_epochs: int | None,
    quiet: bool,
    command: Sequence[str] | None,
) -> TrainResult:
    begin_run(run_dir, "classifier", cfg, command, resume)
    seed = cfg.runtime.seed
    torch.manual_seed(seed)
    backbone, preprocess, dino_rec = load_backbone_run(Path(cfg.backbone))
    if cfg.input_window_hu:  # the fine-tuned filter reads a fixed HU window (recorded in config.json)
        lo, hi = (float(v) for v in cfg.input_window_hu)
        preprocess = dataclasses.replace(preprocess, normalisation="window", window_hu=(lo, hi))
    if cfg.input_size or cfg.input_pool != 1:
        backbone, preprocess = rebuild_backbone(backbone, preprocess, dino_rec, cfg.input_size, cfg.input_pool)
    backbone = backbone.to(device).eval()
    finetune = cfg.finetune
    for p in backbone.parameters():
        p.requires_grad = finetune
    spec = FeatureSpec(cfg.feature_mode, cfg.n_last_blocks, cfg.avgpool, cfg.maxpool, cfg.input_pool)
    gate = CandidateRule() if cfg.candidate_gate else None  # the Agatston lesion rule, as served by default
    grid = backbone.patch_embed.grid_size

    loaded = load_data(cfg.data, run_dir, quiet)
    overlap = _split_overlap(Path(cfg.backbone), loaded.split)
    if overlap:
        log.warning(
            "%d validation/test patients were in the DINO training split: %s", len(overlap), overlap[:5]
        )
    sets: dict[str, ClassifierSliceDataset] = {}
    for name in ("train", "val", "test"):
        cases = [c for c in loaded.cases_of(name) if c.labelled]
        refs = select_slices(cases, cfg.data, labelled_only=True, seed=seed)
        sets[name] = ClassifierSliceDataset(
            cases,
            refs,
            preprocess,
            augment=(cfg.augment and name == "train"),
            crop_scale=(cfg.crop_scale[0], cfg.crop_scale[1]),
            seed=seed,
            patch_grid=grid if (name == "train" and cfg.patch_loss_weight > 0) else 0,
            candidate_grid=grid if (name == "train" and gate is not None) else 0,
            candidate_rule=gate,
        )
    cands: dict[str, Tensor | None] = {
        name: candidate_masks(sets[name], gate, grid) if gate is not None and name != "train" else None
        for name in ("val", "test")
    }
    y_train = sets["train"].targets()
    n_pos, n_neg = int(y_train.sum()), int(len(y_train) - y_train.sum())
    if not len(y_train) or not n_pos or not n_neg:
        raise ValueError(
            f"the training split needs calcified and calcium-free labelled slices (has {n_pos} and {n_neg})"
        )
    if not len(sets["val"]):
        raise ValueError(
            "the validation split has no labelled slices: early stopping and the threshold need them"
        )
    pos_weight = cfg.pos_weight or n_neg / n_pos

    head = make_head(spec, backbone.embed_dim)
    if cfg.init_from:
        init_from_classifier(Path(cfg.init_from), backbone, head, spec, preprocess)
    head = head.to(device)
    groups: list[dict[str, Any]] = [{"params": list(head.parameters()), "lr": cfg.lr}]
    patch_head: Any = None
    if isinstance(head, PatchMaxHead):  # the served layer itself is trained on the patch labels
        patch_head = head.patch_logits if cfg.patch_loss_weight > 0 else None
    elif cfg.patch_loss_weight > 0:  # training-time guidance only: never exported
        aux = torch.nn.Linear(backbone.embed_dim, 1).to(device)
        groups.append({"params": list(aux.parameters()), "lr": cfg.lr})
        patch_head = lambda t: aux(t).squeeze(-1)  # noqa: E731
    if finetune:
        groups.append({"params": list(backbone.parameters()), "lr": cfg.backbone_lr})
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    what = "fine-tuned" if finetune else "linear"
    mlog = MetricsLog(run_dir, f"{what} slice classifier on {dino_rec['arch']} ({spec.mode})")
    start_epoch, best_f1, bad_epochs, stopped_early = 0, -1.0, 0, False
    best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    best_backbone = _clone(backbone) if finetune else {}
    if resume:
        tensors, meta = load_checkpoint(run_dir)
        if meta.get("stage") != "classifier":
            raise ValueError(f"{run_dir}: checkpoint is for stage {meta.get('stage')!r}, not classifier")
        head.load_state_dict(unprefixed("head", tensors))
        best_state = unprefixed("best_head", tensors)
        if finetune:
            backbone.load_state_dict(unprefixed("backbone", tensors))
            best_backbone = unprefixed("best_backbone", tensors)
        optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
        rng_from_tensors(tensors, meta.get("rng", {}))
        start_epoch, best_f1 = int(meta["epoch"]), float(meta["best_f1"])
        bad_epochs, stopped_early = int(meta["bad_epochs"]), bool(meta["stopped_early"])
        mlog.truncate(start_epoch)

    status, ran, it = "finished", 0, 0
    with progress(quiet) as bar:
        cache: dict[str, tuple[Tensor, Tensor]] = {}
        for name in ("train", "val", "test"):
            if name == "train" and (cfg.augment or finetune):
                continue
            if finetune and name == "test":
                continue  # computed with the final backbone at the end
            cache[name] = compute_features(
                backbone, sets[name], spec, device, cfg.runtime.precision, cfg.batch_size, bar, name
            )
        raw = dict(cache)
        stats = feature_stats(cache["train"][0]) if cfg.standardize else None
        if stats is not None:
            cache = {k: (standardize(f, stats), y) for k, (f, y) in cache.items()}
        ep_task = bar.add_task("classifier epochs", total=cfg.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch, cfg.epochs):
            if stopped_early:
                break
            if stop_after_epochs is not None and ran >= stop_after_epochs:
                status = "paused"
                break
            t0 = time.perf_counter()
            torch.manual_seed(epoch_seed(seed, epoch))
            g = torch.Generator()
            g.manual_seed(epoch_seed(seed, epoch) + 5)
            order = torch.randperm(len(sets["train"]), generator=g)
            head.train()
            if finetune:
                backbone.train()
            losses = []
            if cfg.augment:
                sets["train"].set_epoch(epoch)
            it_task = bar.add_task(f"epoch {epoch + 1}", total=len(order), info="") if finetune else None
            for s in range(0, len(order), cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                if cfg.augment or finetune:
                    items = [sets["train"][int(i)] for i in idx]
                    x = torch.stack([it_[0] for it_ in items]).to(device)
                    y = torch.stack([it_[1] for it_ in items]).to(device)
                    flip = (torch.rand(len(items), generator=g) < cfg.hflip_p) if cfg.hflip_p else None
                    if flip is not None:
                        x = torch.where(flip.view(-1, 1, 1, 1).to(device), x.flip(-1), x)
                    with torch.set_grad_enabled(finetune), autocast(device, cfg.runtime.precision):
                        f, patches = features_and_patch_tokens(backbone, x, spec)
                        f = f.float()
                    if it_task is not None:
                        bar.update(it_task, advance=len(idx))
                else:
                    f, y = cache["train"][0][idx].to(device), cache["train"][1][idx].to(device)
                cand = None
                if gate is not None:  # candidates flip with the slice, like the patch targets
                    cand = _flip_grid(torch.stack([it_[3] for it_ in items]).to(device), flip, grid)
                logits = head(f) if cand is None else head(f, cand)
                keep = None if cand is None else cand.amax(dim=-1) > 0  # no candidate: the gate decides
                loss = _weighted_bce(logits, y, pos_weight, keep)
                if patch_head is not None:
                    pt = _flip_grid(torch.stack([it_[2] for it_ in items]).to(device), flip, grid)
                    loss = loss + cfg.patch_loss_weight * _weighted_bce(
                        patch_head(patches.float()), pt, cfg.patch_pos_weight, None if cand is None else cand > 0
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                it += 1
            ran += 1
            if it_task is not None:
                bar.remove_task(it_task)
            if finetune:  # the features moved with the backbone
                cache["val"] = compute_features(
                    backbone, sets["val"], spec, device, cfg.runtime.precision, cfg.batch_size, bar, "val"
                )
            val = _evaluate(head, *cache["val"], pos_weight, device, cands["val"])
            f1 = val["f1"] if np.isfinite(val["f1"]) else 0.0
            if f1 > best_f1:
                best_f1, bad_epochs = f1, 0
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                if finetune:
                    best_backbone = _clone(backbone)
            else:
                bad_epochs += 1
                stopped_early = bad_epochs >= cfg.patience
            record = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "val_loss": val["loss"],
                "val_f1": val["f1"],
                "val_sensitivity": val["sensitivity"],
                "val_specificity": val["specificity"],
                "val_auc": val["auc"],
                "time_s": time.perf_counter() - t0,
            }
            if is_main():
                mlog.append(record)
                _save(
                    run_dir,
                    epoch + 1,
                    head,
                    best_state,
                    optimizer,
                    best_f1,
                    bad_epochs,
                    stopped_early,
                    {**prefixed("backbone", backbone.state_dict()), **prefixed("best_backbone", best_backbone)}
                    if finetune
                    else {},
                )
            bar.update(ep_task, advance=1, info=f"val F1 {val['f1']:.3f}")

        if is_main():
            mlog.finish()
        result = TrainResult(run_dir, status, len(mlog.records), it, list(mlog.records))
        if status != "finished":
            return result
        head.load_state_dict(best_state)
        if stats is not None:
            fold_standardization(head, stats)
        cache = raw  # from here on the head reads raw features, as served
        if finetune:
            backbone.load_state_dict(best_backbone)
            backbone.eval()
            for name in ("val", "test"):
                cache[name] = compute_features(
                    backbone, sets[name], spec, device, cfg.runtime.precision, cfg.batch_size, bar, name
                )
        val_probs = _probs(head, cache["val"][0], device, cands["val"])
        val_t = cache["val"][1].numpy()
        threshold = threshold_for_sensitivity(val_probs, val_t, cfg.target_sensitivity)
        threshold_rule = f"highest threshold with validation sensitivity >= {cfg.target_sensitivity}"
        if not np.isfinite(threshold):
            threshold, threshold_rule = 0.5, "0.5 (the validation split has no calcified slice)"
        summary: dict[str, Any] = {
            "standardized_then_folded": stats is not None,
            "finetuned_backbone": finetune,
            "threshold": threshold,
            "threshold_rule": threshold_rule,
            "pos_weight": pos_weight,
            "best_val_f1_at_0.5": best_f1,
            "stopped_early": stopped_early,
            "val": binary_metrics(val_probs, val_t, threshold) | {"auc": roc_auc(val_probs, val_t)},
        }
        if len(cache["test"][1]):
            tp = _probs(head, cache["test"][0], device, cands["test"])
            summary["test"] = binary_metrics(tp, cache["test"][1].numpy(), threshold) | {
                "auc": roc_auc(tp, cache["test"][1].numpy())
            }
        result.summary = summary
    if is_main():
        model = SliceFilter(backbone, head, spec)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            str(run_dir / MODEL_FILE),
            metadata={"format": "cacstream-slice-filter/1"},
        )
        write_json(
            run_dir / RUN_RECORD_FILE,
            {
                "stage": "classifier",
                "finished": True,
                "backbone_run": str(Path(cfg.backbone).resolve()),
                "arch": dino_rec["arch"],
                "arch_kwargs": dict(getattr(backbone, "arch_kwargs", dino_rec.get("arch_kwargs", {}))),
                "embed_dim": backbone.embed_dim,
                "feature": spec.to_dict(),
                "feature_dim": spec.dim(backbone.embed_dim),
                "candidate_gate": gate.to_dict() if gate is not None else None,
                "init_from": str(Path(cfg.init_from).resolve()) if cfg.init_from else None,
                "preprocess": preprocess.to_dict(),
                "weights": MODEL_FILE,
                "augment": cfg.augment,
                "finetune": (
                    {"backbone_lr": cfg.backbone_lr, "head_lr": cfg.lr, "epochs_run": len(mlog.records)}
                    if finetune
                    else None
                ),
                "dino": {
                    k: dino_rec.get(k)
                    for k in ("multicrop", "epochs", "iterations", "data", "metrics", "command")
                },
                "data": data_summary(loaded),
                "dino_saw_eval_patients": overlap,
                "train_slices": {"positive": n_pos, "negative": n_neg},
                "metrics": summary,
                "epochs": mlog.records,
                "command": list(command or []),
            },
        )
    return result


def _flip_grid(t: Tensor, flip: Tensor | None, grid: int) -> Tensor:
    """Per-patch rows (B, grid²) flipped left-right where ``flip`` is set (the slice was flipped)."""
    if flip is None:
        return t
    flipped = t.view(-1, grid, grid).flip(-1).reshape(t.shape)
    return torch.where(flip.view(-1, 1).to(t.device), flipped, t)


def _weighted_bce(logits: Tensor, targets: Tensor, pos_weight: float, keep: Tensor | None) -> Tensor:
    """Weighted BCE, averaged over the entries ``keep`` selects (all without it; 0 when it selects none)."""
    w = torch.tensor(pos_weight, device=logits.device)
    if keep is None:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=w)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[keep], targets[keep], pos_weight=w)


def _save(
    run_dir: Path,
    next_epoch: int,
    head: LinearHead,
    best: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    best_f1: float,
    bad_epochs: int,
    stopped_early: bool,
    extra: dict[str, Tensor] | None = None,
) -> None:
    tensors = {**prefixed("head", head.state_dict()), **prefixed("best_head", best), **(extra or {})}
    opt_t, opt_meta = optimizer_to_tensors(optimizer)
    rng_t, rng_meta = rng_to_tensors()
    tensors.update(opt_t)
    tensors.update(rng_t)
    save_checkpoint(
        run_dir,
        tensors,
        {
            "stage": "classifier",
            "epoch": next_epoch,
            "best_f1": best_f1,
            "bad_epochs": bad_epochs,
            "stopped_early": stopped_early,
            "optimizer": opt_meta,
            "rng": rng_meta,
        },
    )
