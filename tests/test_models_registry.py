"""Every registered model (timm style): builds, output shape, and ONNX (opset 17, dynamic batch, fixed
input size) equal to PyTorch under ONNX Runtime. ONNX runs use two transformer blocks / two U-Net levels
of each registered width so the whole registry exports in seconds; test_trainers exports trained models
end to end."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from cacstream.engine.domain import NUM_SEG_CLASSES
from cacstream.training.export import check_inputs, check_onnx, export_onnx
from cacstream.training.models.classifier import FeatureSpec, LinearHead, SliceFilter
from cacstream.training.models.registry import create_model, list_models, model_entry
from cacstream.training.models.unet import UNet
from cacstream.training.models.vit import VisionTransformer

ALL = list_models()


def test_registry_lists_the_expected_families() -> None:
    assert {f"vit_{w}_patch{p}" for w in ("tiny", "small", "base") for p in (8, 16)} <= set(ALL)
    assert {"unet_tiny", "unet_small", "unet_medium", "unet_base"} <= set(ALL)
    with pytest.raises(KeyError, match="unknown model"):
        create_model("resnet50")
    with pytest.raises(TypeError, match="cannot build"):
        create_model("unet_small", widht=3)


@pytest.mark.parametrize("name", ALL)
def test_shapes(name: str) -> None:
    entry = model_entry(name)
    if entry.family == "vit":
        m = create_model(name, img_size=32).eval()
        assert isinstance(m, VisionTransformer)
        with torch.no_grad():
            y = m(torch.randn(2, 1, 32, 32))
        assert y.shape == (2, m.embed_dim)
        assert m.pos_embed.shape[1] == 1 + (32 // m.patch_size) ** 2
    else:
        m = create_model(name).eval()
        assert isinstance(m, UNet)
        with torch.no_grad():
            y = m(torch.randn(1, 1, 32, 32))
        assert y.shape == (1, NUM_SEG_CLASSES, 32, 32)


def _small_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if model_entry(name).family == "vit":
        backbone = create_model(name, img_size=32, depth=2)
        return SliceFilter(backbone, LinearHead(2 * backbone.embed_dim), FeatureSpec("cls_avgpool")).eval()
    return create_model(name, depth=2).eval()


@pytest.mark.parametrize("name", ALL)
def test_onnx_matches_pytorch(name: str, tmp_path: Path) -> None:
    """Every registered width/patch exports (fast TorchScript exporter) and ORT equals PyTorch."""
    model = _small_model(name)
    path = export_onnx(model, 32, tmp_path / f"{name}.onnx", opset=17, exporter="torchscript")
    check = check_onnx(model, path, check_inputs(32), tolerance=1e-4)
    assert check.passed, check.max_abs_diff
    assert check.batch_sizes == (3, 1)
    import onnx

    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}.get("", 0) == 17


@pytest.mark.parametrize("name", ["vit_tiny_patch8", "unet_tiny"])
def test_default_dynamo_exporter(name: str, tmp_path: Path) -> None:
    """The default exporter (torch.export → ONNX, its native opset 18): scaled_dot_product_attention,
    LayerNorm, transposed convolutions and batch norm all convert, and the batch axis stays dynamic.
    (Opset 17 is covered by the TorchScript exporter above; dynamo's 18→17 converter fails on ViTs.)"""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    import onnx

    model = _small_model(name)
    path = export_onnx(model, 32, tmp_path / f"{name}.onnx", opset=18, exporter="dynamo")
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}.get("", 0) == 18
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    check = check_onnx(model, path, check_inputs(32), tolerance=1e-4)
    assert check.passed, check.max_abs_diff
