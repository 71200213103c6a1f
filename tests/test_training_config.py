"""Trainer configs: JSON/TOML loading, documented fields, and errors that name the file and the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cacstream.kernels.config import PreprocessConfig
from cacstream.training.config import (
    STAGES,
    ClassifierConfig,
    ConfigError,
    DinoConfig,
    UNetConfig,
    config_from_dict,
    config_to_dict,
    describe_config,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
DATA = {"sources": [{"kind": "npz", "path": "cases"}]}


def test_toml_and_json_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        'arch = "vit_tiny_patch16"\nepochs = 3\nwarmup_epochs = 1\nwarmup_teacher_temp_epochs = 2\n'
        '[preprocess]\ninput_size = 64\n'
        '[multicrop]\nglc = 2\n[[data.sources]]\nkind = "npz"\npath = "cases"\n'
    )
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "arch": "vit_tiny_patch16",
                "epochs": 3,
                "warmup_epochs": 1,
                "warmup_teacher_temp_epochs": 2,
                "preprocess": {"input_size": 64},
                "multicrop": {"glc": 2},
                "data": DATA,
            }
        )
    )
    a, b = load_config("dino", tmp_path / "a.toml"), load_config("dino", tmp_path / "a.json")
    assert a == b
    assert (
        isinstance(a, DinoConfig) and a.preprocess == PreprocessConfig(input_size=64) and a.multicrop.glc == 2
    )
    assert a.data.sources[0].path == str((tmp_path / "cases").resolve())  # relative to the config file


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"epocs": 3}, r"unknown key\(s\) \['epocs'\]"),
        ({"epochs": "3"}, r"epochs: expected an integer"),
        ({"multicrop": {"glc": -1}}, r"glc must be >= 0"),
        ({"preprocess": {"normalisation": "zscore"}}, r"preprocess.*normalisation"),
        ({"runtime": {"precision": "fp8"}}, r"runtime.precision: 'fp8' is not one of"),
        ({"warmup_teacher_temp_epochs": 500}, r"warmup_teacher_temp_epochs \(500\) exceeds epochs"),
        ({"data": {"sources": []}}, r"data.sources is empty"),
        ({"data": {"sources": [{"kind": "phantom"}]}}, r"seeds must be"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, data: dict, match: str) -> None:
    full = {"data": DATA, **data}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(full))
    with pytest.raises(ConfigError, match=match) as err:
        load_config("dino", path)
    assert "bad.json" in str(err.value)


def test_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text("epochs = = 3")
    with pytest.raises(ConfigError, match="x.toml: not valid TOML"):
        load_config("unet", tmp_path / "x.toml")
    with pytest.raises(ConfigError, match="not found"):
        load_config("unet", tmp_path / "missing.json")
    (tmp_path / "x.yaml").write_text("a: 1")
    with pytest.raises(ConfigError, match=".json or .toml"):
        load_config("unet", tmp_path / "x.yaml")


def test_classifier_needs_backbone_and_unet_sizes() -> None:
    with pytest.raises(ConfigError, match="backbone"):
        config_from_dict("classifier", {"data": DATA})
    with pytest.raises(ConfigError, match="train_crop"):
        config_from_dict("unet", {"data": DATA, "train_crop": 1024})
    cfg = config_from_dict("unet", {"data": DATA})
    assert isinstance(cfg, UNetConfig) and cfg.preprocess.input_size == 512


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"feature_mode": "patch_max"}, r"feature_mode patch_max needs finetune = true"),
        ({"feature_mode": "patch_max", "finetune": True, "maxpool": True}, r"maxpool = avgpool = false"),
        ({"input_pool": 4}, r"input_size, input_pool and hflip_p need finetune = true"),
        ({"finetune": True, "input_size": 510, "input_pool": 4}, r"input_pool must be >= 1 and divide input_size"),
        ({"finetune": True, "hflip_p": 1.5}, r"hflip_p must be in \[0, 1\]"),
    ],
)
def test_filter_front_and_read_out_options_are_checked(over: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_dict("classifier", {"data": DATA, "backbone": "runs/dino", **over})
    ok = {"data": DATA, "backbone": "runs/dino", "finetune": True, "feature_mode": "patch_max",
          "input_size": 512, "input_pool": 4, "hflip_p": 0.5}
    assert config_from_dict("classifier", ok).input_pool == 4


def test_every_field_is_documented_and_round_trips() -> None:
    for stage, cls in STAGES.items():
        text = describe_config(cls)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no documentation"
            assert f.name in text
        default = cls(
            data=config_from_dict(
                stage, {"data": DATA, **({"backbone": "x"} if cls is ClassifierConfig else {})}
            ).data,
            **({"backbone": "x"} if cls is ClassifierConfig else {}),
        )
        assert config_from_dict(stage, config_to_dict(default)) == default


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_example_configs_load(path: Path) -> None:
    stage = path.stem.split("_")[-1]
    cfg = load_config(stage, path)
    assert type(cfg) is STAGES[stage]
