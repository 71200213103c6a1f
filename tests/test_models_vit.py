"""ViT backbone: shapes, DINO/timm parameter names and checkpoint loading, the fused attention against a
written-out softmax attention, the build-size position embedding, and the 1→3 channel adapter."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from cacstream.training.models.registry import create_model
from cacstream.training.models.vit import (
    Attention,
    VisionTransformer,
    _trunc_normal_,
    load_pretrained,
    resample_pos_embed,
)


def small_vit(**kw: object) -> VisionTransformer:
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3)
    args.update(kw)
    return VisionTransformer(**args)  # type: ignore[arg-type]


def test_attention_equals_explicit_softmax_attention() -> None:
    torch.manual_seed(0)
    attn = Attention(48, 3).eval()
    x = torch.randn(2, 7, 48)
    b, n, c = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, 3, 16).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = ((q @ k.transpose(-2, -1)) / math.sqrt(16)).softmax(-1)  # DINO's written-out attention
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(b, n, c))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.attention_map(x), weights, atol=1e-6, rtol=1e-5)


def test_parameter_names_follow_dino_and_timm() -> None:
    names = set(small_vit().state_dict())
    for key in (
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight",
        "blocks.0.norm2.bias",
        "blocks.2.mlp.fc1.weight",
        "blocks.2.mlp.fc2.bias",
        "norm.weight",
        "norm.bias",
        "input_adapter.weight",
    ):
        assert key in names, key
    assert small_vit().state_dict()["pos_embed"].shape == (1, 1 + 16, 48)


def test_outputs_cls_tokens_and_intermediate_layers() -> None:
    torch.manual_seed(1)
    m = small_vit().eval()
    x = torch.randn(3, 1, 32, 32)
    tokens = m.forward_features(x)
    assert tokens.shape == (3, 17, 48)
    torch.testing.assert_close(m(x), tokens[:, 0])
    layers = m.get_intermediate_layers(x, 2)
    assert len(layers) == 2
    torch.testing.assert_close(layers[-1], tokens)
    assert m.get_last_selfattention(x).shape == (3, 3, 17, 17)
    with pytest.raises(ValueError):
        m.get_intermediate_layers(x, 4)


def test_adapter_starts_as_channel_replication() -> None:
    """With the replication init the 1-channel model equals a 3-channel ViT fed the grey image 3 times."""
    torch.manual_seed(2)
    m = small_vit().eval()
    rgb = small_vit(in_chans=3).eval()
    assert isinstance(rgb.input_adapter, torch.nn.Identity)
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith("input_adapter.")}
    rgb.load_state_dict(sd)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(m(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-5)


def test_build_size_has_no_interpolation_and_other_sizes_interpolate_bicubically() -> None:
    m = small_vit()
    assert m.interpolate_pos_encoding(17, 32, 32) is m.pos_embed
    pe = m.interpolate_pos_encoding(1 + 4, 16, 16)
    grid = m.pos_embed[:, 1:].reshape(1, 4, 4, 48).permute(0, 3, 1, 2)
    expected = (
        F.interpolate(grid, size=(2, 2), mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
        .reshape(1, 4, 48)
    )
    torch.testing.assert_close(pe[:, 1:], expected)
    torch.testing.assert_close(pe[:, :1], m.pos_embed[:, :1])
    assert m(torch.randn(2, 1, 16, 16)).shape == (2, 48)  # a local crop size


def test_load_pretrained_resamples_pos_embed_and_strips_prefixes() -> None:
    torch.manual_seed(3)
    src = small_vit(img_size=64, in_chans=3)  # an "RGB checkpoint" at another resolution
    ckpt = {f"module.backbone.{k}": v for k, v in src.state_dict().items()}
    ckpt["module.head.mlp.0.weight"] = torch.zeros(4, 4)  # DINO head keys are dropped
    dst = small_vit(img_size=32)
    report = load_pretrained(dst, ckpt)
    assert report["missing"] == ["input_adapter.weight", "input_adapter.bias"]
    assert report["unexpected"] == []
    torch.testing.assert_close(dst.blocks[1].mlp.fc1.weight, src.blocks[1].mlp.fc1.weight)
    torch.testing.assert_close(dst.pos_embed, resample_pos_embed(src.pos_embed, 4))
    assert dst.pos_embed.shape == (1, 17, 48)
    with pytest.raises(KeyError, match="lacks backbone weights"):
        load_pretrained(small_vit(), {"cls_token": torch.zeros(1, 1, 48)})


def test_truncated_normal_init_statistics() -> None:
    torch.manual_seed(4)
    t = _trunc_normal_(torch.empty(200_000), std=1.0)
    assert float(t.abs().max()) <= 2.0
    # the standard normal truncated at ±2 has sd sqrt(1 - 2·2·φ(2)/(2Φ(2) − 1)) = 0.8796
    assert abs(float(t.std()) - 0.8796) < 0.01
    assert abs(float(t.mean())) < 0.01


def test_registry_widths_match_dino() -> None:
    for name, dim, heads in (("vit_tiny_patch16", 192, 3), ("vit_small_patch8", 384, 6)):
        m = create_model(name, img_size=32, depth=1)
        assert isinstance(m, VisionTransformer)
        assert (m.embed_dim, m.blocks[0].attn.num_heads) == (dim, heads)
        assert m.arch_kwargs == {"img_size": 32, "depth": 1}
    with pytest.raises(ValueError, match="multiple of patch_size"):
        create_model("vit_tiny_patch16", img_size=40)
