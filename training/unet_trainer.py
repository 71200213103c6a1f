"""Per-artery calcium U-Net (paper §3.4, Table 5): 5 classes (background, LM, LAD, LCX, RCA), trained on
calcified slices plus a share of calcium-free ones, with cross-entropy + soft Dice for the extreme
imbalance (calcium is ~0.04 % of a slice).

* Cross-entropy is class-weighted: by default w_c = (f_background / f_c)^0.5 from the training pixels,
  capped at 100 (inverse frequency would be ~2,500 and makes the net paint every bright pixel).
* Soft Dice is averaged over the artery classes present in the batch's ground truth; an artery absent
  from the batch has no Dice term (its Dice would be 0/0), so false positives of absent classes are left
  to the cross-entropy — which is exactly what the calcium-free slices teach.

The network trains on random patches (``train_crop``, mostly containing calcium) and is validated and
served on whole slices at ``preprocess.input_size``. The best epoch by validation mean Dice is kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from cacstream.engine.domain import ARTERIES, NUM_SEG_CLASSES
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
from cacstream.training.classifier_trainer import RunError, read_run_record
from cacstream.training.config import UNetConfig
from cacstream.training.datasets.preprocess import resize_labels
from cacstream.training.datasets.slices import IGNORE_INDEX, SegmentationSliceDataset, SliceRef, select_slices
from cacstream.training.dino.schedules import cosine_scheduler
from cacstream.training.metrics import dice_per_class
from cacstream.training.metrics_log import MetricsLog
from cacstream.training.models.registry import create_model
from cacstream.training.models.unet import UNet
from cacstream.training.runtime import (
    MODEL_FILE,
    RUN_RECORD_FILE,
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
from cacstream.training.weights import CONFIG_FILE, SEGMENTER_KEY, WeightsError, load_weights
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader

CLASS_NAMES = ("background",) + ARTERIES


def segmentation_loss(
    logits: Tensor,
    target: Tensor,
    ce_weights: Tensor | None,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    eps: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """Weighted cross-entropy + (1 − mean soft Dice over artery classes present in ``target``).

    Pixels whose target is ``IGNORE_INDEX`` (``loss_on_candidates``: below the calcium threshold)
    take part in neither term."""
    logits = logits.float()
    valid = target != IGNORE_INDEX
    if not bool(valid.any()):
        zero = logits.sum() * 0.0  # keeps the graph; nothing to learn from this batch
        return zero, {"ce": 0.0, "dice_loss": 0.0}
    ce = F.cross_entropy(logits, target, weight=ce_weights, ignore_index=IGNORE_INDEX)
    keep = valid.unsqueeze(1).to(logits.dtype)
    probs = logits.softmax(dim=1)[:, 1:] * keep
    onehot = F.one_hot(target.clamp_min(0), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype) * keep
    support = onehot.sum(dim=(0, 2, 3))
    present = support > 0
    if bool(present.any()):
        inter = (probs * onehot).sum(dim=(0, 2, 3))
        denom = probs.sum(dim=(0, 2, 3)) + support
        dice = (2 * inter + eps) / (denom + eps)
        dice_loss = 1.0 - dice[present].mean()
    else:
        dice_loss = logits.new_zeros(())
    total = ce_weight * ce + dice_weight * dice_loss
    return total, {"ce": float(ce.detach()), "dice_loss": float(dice_loss.detach())}


def class_frequencies(dataset: SegmentationSliceDataset, refs: Sequence[SliceRef]) -> np.ndarray:
    """Pixel count per class over ``refs`` at the model's input size."""
    counts = np.zeros(NUM_SEG_CLASSES, dtype=np.float64)
    size = dataset.preprocess.input_size
    if dataset.ignore_below_hu is not None:  # candidates only: the classes the loss actually sees
        for r in refs:
            y = dataset.full_slice(r)[1].numpy()
            counts += np.bincount(y[y >= 0].ravel(), minlength=NUM_SEG_CLASSES)[:NUM_SEG_CLASSES]
        return counts
    for r in refs:
        lab = dataset.cases[r.case].labels
        if lab is None:
            counts[0] += size * size
            continue
        y = resize_labels(torch.from_numpy(np.asarray(lab[r.z]).astype(np.int64))[None], size)[0].numpy()
        counts += np.bincount(y.ravel(), minlength=NUM_SEG_CLASSES)[:NUM_SEG_CLASSES]
    return counts


def auto_class_weights(counts: np.ndarray, cap: float = 100.0) -> list[float]:
    """w_bg = 1, w_c = min((f_bg / f_c)^0.5, cap) for classes with pixels, 1 for classes without."""
    bg = max(counts[0], 1.0)
    return [1.0] + [float(min((bg / c) ** 0.5, cap)) if c > 0 else 1.0 for c in counts[1:]]


@torch.no_grad()
def evaluate_segmenter(
    model: nn.Module,
    dataset: SegmentationSliceDataset,
    device: torch.device,
    precision: str,
    batch_size: int,
    ce_weights: Tensor | None,
    cfg: UNetConfig,
) -> dict[str, Any]:
    """Whole-slice validation: mean loss and per-artery Dice pooled over all pixels of the split."""
    model.eval()
    counts = {c: {"tp": 0, "fp": 0, "fn": 0} for c in range(1, NUM_SEG_CLASSES)}
    losses = []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        with autocast(device, precision):
            logits = model(x)
        loss, _ = segmentation_loss(logits, y, ce_weights, cfg.ce_weight, cfg.dice_weight)
        losses.append(float(loss) * len(y))
        pred, ref = logits.argmax(dim=1).cpu().numpy(), y.cpu().numpy()
        ignored = ref == IGNORE_INDEX  # loss_on_candidates: Dice over the pixels scoring reads
        pred[ignored], ref[ignored] = 0, 0
        for c, d in dice_per_class(pred, ref, NUM_SEG_CLASSES).items():
            for k in ("tp", "fp", "fn"):
                counts[c][k] += int(d[k])
    out: dict[str, Any] = {"loss": sum(losses) / max(len(dataset), 1)}
    dices = []
    for c, k in counts.items():
        den = 2 * k["tp"] + k["fp"] + k["fn"]
        d = 2 * k["tp"] / den if den else float("nan")
        out[f"dice_{CLASS_NAMES[c]}"] = d
        if k["tp"] + k["fn"] > 0:  # only arteries with calcium in the split count in the mean
            dices.append(d)
    out["mean_dice"] = float(np.mean(dices)) if dices else float("nan")
    return out


def build_unet(cfg: UNetConfig) -> UNet:
    model = create_model(cfg.arch, **cfg.arch_kwargs)
    if not isinstance(model, UNet):
        raise ValueError(f"{cfg.arch!r} is not a U-Net")
    if cfg.preprocess.input_size % model.size_multiple or (
        cfg.train_crop and cfg.train_crop % model.size_multiple
    ):
        raise ValueError(
            f"input_size {cfg.preprocess.input_size} and train_crop {cfg.train_crop} must be multiples "
            f"of {model.size_multiple} (2**depth)"
        )
    return model


def init_from_run(model: UNet, cfg: UNetConfig, run: Path) -> None:
    """Load a finished U-Net run's final model into ``model``; its arch must be ``cfg``'s.

    ``run`` may also be an exported weights folder (e.g. ``engine/weights/default``), read by the one
    weights reader (``training/weights.py``; fp16-stored tensors land in float32), so shipped weights can
    be fine-tuned when the run that made them is gone."""
    try:
        rec = read_run_record(run, "unet")
        arch, kwargs = rec["arch"], dict(rec.get("arch_kwargs", {}))
        source: dict[str, torch.Tensor] | Path = run / rec.get("weights", MODEL_FILE)
    except RunError as not_a_run:
        if not (run / CONFIG_FILE).is_file():
            raise ValueError(f"init_from {run}: neither a finished `cacstream train unet` run nor an exported "
                             f"weights folder ({not_a_run})") from None
        try:
            seg = load_weights(run, parts=(SEGMENTER_KEY,)).segmenter
        except (WeightsError, OSError) as e:
            raise ValueError(f"init_from {run}: neither a finished `cacstream train unet` run nor an exported "
                             f"weights folder ({not_a_run}; {e})") from None
        assert seg is not None
        arch, kwargs = str(seg.config["arch"]["name"]), dict(seg.config["arch"].get("kwargs", {}))
        source = seg.model.state_dict()
    if arch != cfg.arch or kwargs != dict(cfg.arch_kwargs):
        raise ValueError(f"init_from {run}: its arch {arch} {kwargs} differs from this config's {cfg.arch} {cfg.arch_kwargs}")
    try:
        model.load_state_dict(load_file(str(source)) if isinstance(source, Path) else source)
    except (OSError, RuntimeError) as e:
        raise ValueError(f"init_from {run}: cannot load its model ({e})") from None


def train_unet(
    cfg: UNetConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    quiet: bool = False,
    command: Sequence[str] | None = None,
) -> TrainResult:
    """Train (or resume) the per-artery U-Net into ``run_dir``."""
    return run_stage(
        _train_unet, cfg, run_dir, resume=resume, stop_after_epochs=stop_after_epochs, quiet=quiet, command=command
    )


def _train_unet(
    cfg: UNetConfig,
    run_dir: Path,
    device: torch.device,
    *,
    resume: bool,
    stop_after_epochs: int | None,
    quiet: bool,
    command: Sequence[str] | None,
) -> TrainResult:
    begin_run(run_dir, "unet", cfg, command, resume)
    seed = cfg.runtime.seed
    torch.manual_seed(seed)
    model = build_unet(cfg).to(device)
    if cfg.init_from and not resume:  # on resume the checkpoint holds the weights already
        init_from_run(model, cfg, Path(cfg.init_from))
    if cfg.runtime.compile:
        model.compile()

    loaded = load_data(cfg.data, run_dir, quiet)
    sets: dict[str, SegmentationSliceDataset] = {}
    for name in ("train", "val", "test"):
        cases = [c for c in loaded.cases_of(name) if c.labelled]
        refs = select_slices(cases, cfg.data, labelled_only=True, seed=seed)
        sets[name] = SegmentationSliceDataset(
            cases,
            [r for r in refs if r.calcified],
            [r for r in refs if not r.calcified],
            cfg.preprocess,
            train_crop=cfg.train_crop if name == "train" else 0,
            positive_crop_p=cfg.positive_crop_p,
            negative_fraction=cfg.negative_fraction,
            hard_negative_crop_p=cfg.hard_negative_crop_p if name == "train" else 0.0,
            hflip_p=cfg.hflip_p if name == "train" else 0.0,
            intensity_jitter=cfg.intensity_jitter if name == "train" else 0.0,
            seed=seed,
            train=(name == "train"),
            ignore_below_hu=cfg.preprocess.calcium_threshold_hu if cfg.loss_on_candidates else None,
        )
    train_set = sets["train"]
    if not train_set.positives:
        raise ValueError("the training split has no calcified labelled slice")
    niter = max(1, -(-len(train_set) // cfg.batch_size))
    if cfg.ce_class_weights:
        weights = list(cfg.ce_class_weights)
        weights_rule = "from config"
    else:
        weights = auto_class_weights(class_frequencies(train_set, train_set.positives + train_set.negatives))
        weights_rule = "(f_bg / f_c)^0.5 of training pixels, capped at 100"
    ce_weights = torch.tensor(weights, dtype=torch.float32, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_schedule = cosine_scheduler(
        cfg.lr,
        cfg.min_lr,
        cfg.epochs,
        niter,
        warmup_epochs=cfg.warmup_epochs,
        start_warmup_value=cfg.lr * 0.01,
    )
    mlog = MetricsLog(
        run_dir, f"U-Net {cfg.arch} (input {cfg.preprocess.input_size}, patches {cfg.train_crop or 'whole'})"
    )
    start_epoch, best, bad_epochs, stopped_early = 0, -1.0, 0, False
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resume:
        tensors, meta = load_checkpoint(run_dir)
        if meta.get("stage") != "unet":
            raise ValueError(f"{run_dir}: checkpoint is for stage {meta.get('stage')!r}, not unet")
        model.load_state_dict(unprefixed("model", tensors))
        best_state = unprefixed("best", tensors)
        optimizer_from_tensors(optimizer, {k: v.to(device) for k, v in tensors.items()}, meta["optimizer"])
        rng_from_tensors(tensors, meta.get("rng", {}))
        start_epoch, best = int(meta["epoch"]), float(meta["best"])
        bad_epochs, stopped_early = int(meta["bad_epochs"]), bool(meta["stopped_early"])
        mlog.truncate(start_epoch)

    status, ran = "finished", 0
    it = start_epoch * niter
    with progress(quiet) as bar:
        ep_task = bar.add_task("U-Net epochs", total=cfg.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch, cfg.epochs):
            if stopped_early:
                break
            if stop_after_epochs is not None and ran >= stop_after_epochs:
                status = "paused"
                break
            t0 = time.perf_counter()
            torch.manual_seed(epoch_seed(seed, epoch))
            train_set.set_epoch(epoch)
            g = torch.Generator()
            g.manual_seed(epoch_seed(seed, epoch) + 3)
            loader = DataLoader(
                train_set,
                batch_size=cfg.batch_size,
                shuffle=True,
                generator=g,
                num_workers=cfg.runtime.num_workers,
                pin_memory=device.type == "cuda",
            )
            model.train()
            losses, ces, dls = [], [], []
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=niter, info="")
            for x, y in loader:
                for group in optimizer.param_groups:
                    group["lr"] = float(lr_schedule[min(it, len(lr_schedule) - 1)])
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with autocast(device, cfg.runtime.precision):
                    logits = model(x)
                loss, parts = segmentation_loss(logits, y, ce_weights, cfg.ce_weight, cfg.dice_weight)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"U-Net loss is {float(loss)} at epoch {epoch}, iteration {it}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                ces.append(parts["ce"])
                dls.append(parts["dice_loss"])
                it += 1
                bar.update(task, advance=1, info=f"loss {losses[-1]:.4f}")
            bar.remove_task(task)
            ran += 1
            val = (
                evaluate_segmenter(
                    model, sets["val"], device, cfg.runtime.precision, cfg.batch_size, ce_weights, cfg
                )
                if len(sets["val"])
                else {}
            )
            score = val.get("mean_dice", float("nan"))
            score = score if np.isfinite(score) else -float(val.get("loss", 0.0))
            if score > best:
                best, bad_epochs = score, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
                stopped_early = bool(cfg.patience) and bad_epochs >= cfg.patience
            record = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "train_ce": float(np.mean(ces)),
                "train_dice_loss": float(np.mean(dls)),
                "lr": float(lr_schedule[min(it, len(lr_schedule)) - 1]),
                **{f"val_{k}": v for k, v in val.items()},
                "time_s": time.perf_counter() - t0,
            }
            if is_main():
                mlog.append(record)
                _save(run_dir, epoch + 1, model, best_state, optimizer, best, bad_epochs, stopped_early)
            bar.update(ep_task, advance=1, info=f"val Dice {val.get('mean_dice', float('nan')):.3f}")

        if is_main():
            mlog.finish()
        result = TrainResult(run_dir, status, len(mlog.records), it, list(mlog.records))
        if status != "finished":
            return result
        model.load_state_dict(best_state)
        summary: dict[str, Any] = {
            "best_epoch_score": best,
            "stopped_early": stopped_early,
            "ce_class_weights": weights,
            "ce_class_weights_rule": weights_rule,
        }
        for name in ("val", "test"):
            if len(sets[name]):
                summary[name] = evaluate_segmenter(
                    model, sets[name], device, cfg.runtime.precision, cfg.batch_size, ce_weights, cfg
                )
        result.summary = summary
    if is_main():
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            str(run_dir / MODEL_FILE),
            metadata={"format": "cacstream-segmenter/1"},
        )
        write_json(
            run_dir / RUN_RECORD_FILE,
            {
                "stage": "unet",
                "finished": True,
                "arch": cfg.arch,
                "arch_kwargs": dict(cfg.arch_kwargs),
                "classes": list(CLASS_NAMES),
                "preprocess": cfg.preprocess.to_dict(),
                "weights": MODEL_FILE,
                "train_crop": cfg.train_crop,
                "negative_fraction": cfg.negative_fraction,
                "hard_negative_crop_p": cfg.hard_negative_crop_p,
                "init_from": cfg.init_from or None,
                "data": data_summary(loaded),
                "metrics": summary,
                "epochs": mlog.records,
                "command": list(command or []),
            },
        )
    return result


def _save(
    run_dir: Path,
    next_epoch: int,
    model: nn.Module,
    best_state: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    best: float,
    bad_epochs: int,
    stopped_early: bool,
) -> None:
    tensors = {**prefixed("model", model.state_dict()), **prefixed("best", best_state)}
    opt_t, opt_meta = optimizer_to_tensors(optimizer)
    rng_t, rng_meta = rng_to_tensors()
    tensors.update(opt_t)
    tensors.update(rng_t)
    save_checkpoint(
        run_dir,
        tensors,
        {
            "stage": "unet",
            "epoch": next_epoch,
            "best": best,
            "bad_epochs": bad_epochs,
            "stopped_early": stopped_early,
            "optimizer": opt_meta,
            "rng": rng_meta,
        },
    )
