"""A tiny but real weights folder, made once per test session by the training code itself.

DINO-LG pretraining (1 epoch, 1-block ViT at 32²), the fine-tuned patch_max slice filter on it and a
2-level U-Net at 32², all trained on small phantoms and exported by ``training/export.py`` (safetensors
+ config.json + ONNX checked against PyTorch). The models are barely trained, but they are the exact
architectures, file formats and code paths that default weights go through, which is what the
backend and runtime tests need. Building it takes ~20-40 s on 2 cores; tests share one copy through
:func:`tiny_weights_dir`.

Shapes are chosen to exercise every resampling path: phantoms are 64², the segmenter takes 32², so
preprocessing down-samples and its labels are resampled back to 64²; the filter is served 64² and its
ViT sees 32² behind a 2x2 max-pool, as the shipped filter (512² served, 4x4 max-pool, ViT at 128²).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

_CACHE: dict[str, Path] = {}

TRAIN_SEEDS = (9100, 6)  # phantom seeds [first, count] used for training — tests evaluate on others
INPUT_SIZE = 32
MATRIX = 64
FILTER_INPUT_SIZE = 64  # the shipped filter's front: served at the matrix, a 2x2 max-pool, the ViT at 32²


def _data(cache_dir: Path) -> dict[str, Any]:
    return {
        "sources": [{"kind": "phantom", "seeds": list(TRAIN_SEEDS), "cache_dir": str(cache_dir),
                     "phantom": {"matrix": MATRIX, "z_coverage_mm": 30.0, "calcium_category": "101-400",
                                 "thickness_mm": 3.0}}],
        "split": {"val_fraction": 0.34, "test_fraction": 0.0, "seed": 0, "stratify": False},
    }


def build_tiny_weights(root: Path) -> Path:
    """Train the three tiny stages under ``root`` and export them to ``root/weights``."""
    from cacstream.training.classifier_trainer import train_classifier
    from cacstream.training.config import config_from_dict
    from cacstream.training.dino.trainer import train_dino
    from cacstream.training.export import export_weights
    from cacstream.training.unet_trainer import train_unet

    cache = root / "cases"
    pre = {"input_size": INPUT_SIZE}
    runtime = {"device": "cpu", "seed": 0}
    dino = config_from_dict("dino", {
        "arch": "vit_tiny_patch16", "arch_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2},
        "preprocess": pre, "out_dim": 64, "head_hidden_dim": 32, "head_bottleneck_dim": 16, "epochs": 1,
        "warmup_teacher_temp_epochs": 0, "warmup_epochs": 0, "batch_size": 16,
        "multicrop": {"local_crop_size": 16, "rlc": 1, "glc": 1},
        "data": {**_data(cache), "max_slices_per_case": 8}, "runtime": runtime,
    })
    train_dino(dino, root / "dino", quiet=True)  # type: ignore[arg-type]
    clf = config_from_dict("classifier", {
        "backbone": str(root / "dino"), "epochs": 2, "batch_size": 32, "lr": 1e-3, "target_sensitivity": 0.9,
        # the shipped filter's graph: MaxPool front, ViT, a linear layer per patch token, ReduceMax
        "finetune": True, "feature_mode": "patch_max", "patch_loss_weight": 1.0, "backbone_lr": 1e-3,
        "input_size": FILTER_INPUT_SIZE, "input_pool": FILTER_INPUT_SIZE // INPUT_SIZE,
        "data": _data(cache), "runtime": runtime,
    })
    train_classifier(clf, root / "classifier", quiet=True)  # type: ignore[arg-type]
    unet = config_from_dict("unet", {
        "arch": "unet_tiny", "arch_kwargs": {"base_filters": 4, "depth": 2}, "preprocess": pre, "train_crop": 0,
        "epochs": 1, "batch_size": 8, "lr": 1e-3, "data": {**_data(cache), "max_slices_per_case": 8},
        "runtime": runtime,
    })
    train_unet(unet, root / "unet", quiet=True)  # type: ignore[arg-type]
    out = root / "weights"
    export_weights(out, root / "classifier", root / "unet", weights_id="tiny-test")
    return out


def tiny_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny weights folder (built on first use; a failure fails the tests that need it)."""
    if "dir" not in _CACHE:
        _CACHE["dir"] = build_tiny_weights(tmp_path_factory.mktemp("tiny_weights"))
    return _CACHE["dir"]
