"""Export and weights folders on hand-made run folders (no training): config.json contents, ONNX checked
against PyTorch (and a failing check that removes the file), and load_weights' validation errors that
name the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cacstream.training.export import ExportError, check_inputs, check_onnx, export_onnx, export_weights
from cacstream.training.models.classifier import FeatureSpec, LinearHead, SliceFilter
from cacstream.training.models.registry import create_model
from cacstream.training.weights import WeightsError, load_weights
from safetensors.torch import save_file

VIT_KW = {"img_size": 32, "depth": 1, "embed_dim": 32, "num_heads": 2}
PRE = {
    "normalisation": "minmax",
    "window_hu": [-1024.0, 3071.0],
    "input_size": 32,
    "output_dtype": "float32",
    "calcium_threshold_hu": 130.0,
    "body_threshold_hu": -500.0,
    "antialias": True,
}


def fake_classifier_run(d: Path) -> SliceFilter:
    torch.manual_seed(0)
    bb = create_model("vit_tiny_patch16", **VIT_KW)
    spec = FeatureSpec("last_blocks", 1, True)
    model = SliceFilter(bb, LinearHead(spec.dim(32)), spec).eval()
    d.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    (d / "run.json").write_text(
        json.dumps(
            {
                "stage": "classifier",
                "finished": True,
                "arch": "vit_tiny_patch16",
                "arch_kwargs": VIT_KW,
                "embed_dim": 32,
                "feature": spec.to_dict(),
                "feature_dim": spec.dim(32),
                "preprocess": PRE,
                "weights": "model.safetensors",
                "metrics": {"threshold": 0.3, "threshold_rule": "test", "val": {"sensitivity": 1.0}},
                "command": ["cacstream", "train", "classifier"],
                "data": {"sources": ["synthetic"]},
            }
        )
    )
    return model


def fake_unet_run(d: Path) -> torch.nn.Module:
    torch.manual_seed(1)
    model = create_model("unet_tiny", depth=2).eval()
    d.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    (d / "run.json").write_text(
        json.dumps(
            {
                "stage": "unet",
                "finished": True,
                "arch": "unet_tiny",
                "arch_kwargs": {"depth": 2},
                "preprocess": {**PRE, "input_size": 32},
                "weights": "model.safetensors",
                "metrics": {"val": {"mean_dice": 0.5}},
            }
        )
    )
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SliceFilter, torch.nn.Module]:
    root = tmp_path_factory.mktemp("export")
    filt = fake_classifier_run(root / "cls")
    seg = fake_unet_run(root / "unet")
    export_weights(
        root / "w", root / "cls", root / "unet", exporter="torchscript", opset=17, weights_id="test-w"
    )
    return root / "w", filt, seg


def test_config_and_files(weights: tuple[Path, SliceFilter, torch.nn.Module]) -> None:
    out, _, _ = weights
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "cacstream-weights/1" and cfg["weights_id"] == "test-w"
    f, s = cfg["slice_filter"], cfg["segmenter"]
    assert f["backbone"] == {"name": "vit_tiny_patch16", "kwargs": VIT_KW}
    assert f["threshold"] == 0.3 and f["feature"]["mode"] == "last_blocks" and f["preprocess"] == PRE
    assert f["input"]["shape"] == ["batch", 1, 32, 32] and f["onnx_opset"] == 17
    assert s["classes"] == ["background", "LM", "LAD", "LCX", "RCA"] and s["onnx_check"]["passed"]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "segmenter.onnx",
        "segmenter.safetensors",
        "slice_filter.onnx",
        "slice_filter.safetensors",
    ]


def test_load_weights_rebuilds_the_same_modules(weights: tuple[Path, SliceFilter, torch.nn.Module]) -> None:
    out, filt, seg = weights
    bundle = load_weights(out)
    x = check_inputs(32)
    with torch.no_grad():
        torch.testing.assert_close(bundle.slice_filter.model(x), filt(x))
        torch.testing.assert_close(bundle.segmenter.model(x), seg(x))
    assert bundle.slice_filter.logit_threshold == pytest.approx(
        torch.logit(torch.tensor(0.3)).item(), rel=1e-5
    )
    assert bundle.weights_id == "test-w"
    only = load_weights(out, parts=("segmenter",))
    assert only.segmenter is not None


def _broken(weights_dir: Path, tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    d = tmp_path / "broken"
    d.mkdir()
    for p in weights_dir.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg, d)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c, d: c.pop("segmenter"), r"config.json: no 'segmenter' section"),
        (
            lambda c, d: c["slice_filter"].update(threshold=1.5),
            r"slice_filter: threshold must be a probability",
        ),
        (lambda c, d: c["slice_filter"]["backbone"].update(name="vit_huge"), r"backbone.name: unknown model"),
        (lambda c, d: c["segmenter"].update(classes=["bg", "A", "B", "C", "D"]), r"segmenter: classes"),
        (lambda c, d: c["segmenter"]["arch"].update(name="vit_tiny_patch16"), r"is a vit, expected a unet"),
        (
            lambda c, d: c["slice_filter"]["preprocess"].update(input_size=64),
            r"input_size 64 != backbone img_size 32",
        ),
        (
            lambda c, d: c["slice_filter"]["preprocess"].update(gamma=2),
            r"preprocess: unknown preprocessing keys",
        ),
        (lambda c, d: c.update(format="v0"), r"format 'v0'"),
        (
            lambda c, d: (d / "segmenter.safetensors").write_bytes(b"junk"),
            r"segmenter.safetensors: not a readable",
        ),
        (lambda c, d: c["slice_filter"]["backbone"]["kwargs"].update(depth=2), r"tensors do not fit"),
    ],
)
def test_bad_weights_folders_are_named(
    weights: tuple[Path, SliceFilter, torch.nn.Module], tmp_path: Path, edit, match: str
) -> None:  # type: ignore[no-untyped-def]
    d = _broken(weights[0], tmp_path, edit)
    with pytest.raises(WeightsError, match=match) as err:
        load_weights(d)
    assert str(d) in str(err.value)


def test_missing_folder_and_invalid_json(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="config.json: not found"):
        load_weights(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_weights(tmp_path)


def test_a_mismatching_onnx_fails_loudly(tmp_path: Path) -> None:
    filt = fake_classifier_run(tmp_path / "cls")
    path = export_onnx(filt, 32, tmp_path / "f.onnx", opset=17, exporter="torchscript")
    with torch.no_grad():  # the PyTorch model changes after export: ORT must now disagree
        filt.head.linear.bias.add_(0.5)
    check = check_onnx(filt, path, check_inputs(32), tolerance=1e-3)
    assert not check.passed and check.max_abs_diff == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(ExportError, match=r"differs from PyTorch by .* the ONNX file was removed"):
        export_weights(tmp_path / "w", tmp_path / "cls", exporter="torchscript", opset=17, tolerance=-1.0)
    assert not (tmp_path / "w" / "slice_filter.onnx").exists()


def test_export_refuses_unfinished_runs_and_low_opsets(tmp_path: Path) -> None:
    from cacstream.training.classifier_trainer import RunError

    d = tmp_path / "r"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"stage": "dino", "finished": True}))
    with pytest.raises(RunError, match="expected a finished 'classifier' run"):
        export_weights(tmp_path / "w", d)
    with pytest.raises(ExportError, match="opset 16"):
        export_onnx(create_model("unet_tiny", depth=1), 16, tmp_path / "x.onnx", opset=16)
