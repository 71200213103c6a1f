"""Vision Transformer backbone for the DINO-LG slice filter, written by hand (timm cannot be installed).

Parameter names follow timm / facebookresearch/dino (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.N.norm1``, ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``, ``blocks.N.norm2``, ``blocks.N.mlp.fc1``,
``blocks.N.mlp.fc2``, ``norm``) so that DINO and timm checkpoints load with :func:`load_pretrained`.

Two things differ from DINO's ``vision_transformer.py``, on purpose:

* a learned 1→3 channel convolution (``input_adapter``) sits in front of the 3-channel patch embedding:
  CT has one channel, and the paper keeps a 3-channel ViT so that 3-channel weights fit. It starts as an
  exact channel replication (weights 1, bias 0), i.e. what feeding a grey image to an RGB network does.
* the model is *built* for one square input size: ``pos_embed`` has that size's token grid, resampled
  bicubically from a checkpoint's grid when loading (:func:`resample_pos_embed`). At the built size the
  forward pass has no interpolation at all, so the ONNX graph is fixed. Other sizes (DINO's local crops)
  are still accepted and interpolate on the fly, as DINO does.

Attention uses ``F.scaled_dot_product_attention`` (fused kernels on GPUs, exports to ONNX opset 17).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def _trunc_normal_(t: Tensor, std: float = 0.02) -> Tensor:
    """Truncated normal in [-2 std, 2 std], as timm/DINO initialise ViTs.

    Rejection sampling (about 4.6 % of draws fall outside and are redrawn, only those): the same
    distribution as ``nn.init.trunc_normal_``, several times faster on CPU (its erfinv path dominates
    a ViT-B build otherwise).
    """
    flat = t.view(-1)
    flat.normal_(0.0, std)
    idx = (flat.abs() > 2 * std).nonzero().squeeze(1)
    while idx.numel():
        draw = torch.empty(idx.numel(), dtype=t.dtype, device=t.device).normal_(0.0, std)
        flat[idx] = draw
        idx = idx[draw.abs() > 2 * std]
    return t


class DropPath(nn.Module):
    """Stochastic depth per sample (DINO/timm): drops the whole residual branch of a sample."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    """Image to patch tokens: a ``patch_size`` stride convolution, flattened to (B, N, D)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size * self.grid_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm names: ``qkv``, ``proj``)."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(y))

    def attention_map(self, x: Tensor) -> Tensor:
        """Softmax attention weights (B, heads, N, N), for visualisation only (not the fused path)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.unbind(0)
        return ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5).softmax(dim=-1)


class Mlp(nn.Module):
    """Transformer feed-forward: fc1 → GELU → fc2 (timm names)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def resample_pos_embed(pos_embed: Tensor, new_grid: int, num_prefix_tokens: int = 1) -> Tensor:
    """Bicubic resampling of a (1, prefix + g*g, D) position embedding to a ``new_grid`` square grid.

    The prefix (CLS) embedding is kept as is; only the patch-grid part is interpolated (DINO/timm).
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = int(round(math.sqrt(grid.shape[1])))
    if old * old != grid.shape[1]:
        raise ValueError(f"position embedding grid of {grid.shape[1]} tokens is not square")
    if old == new_grid:
        return pos_embed
    dim = grid.shape[-1]
    g = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2)
    g = F.interpolate(g.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    g = g.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim)
    return torch.cat([prefix, g], dim=1)


class VisionTransformer(nn.Module):
    """ViT backbone returning the [CLS] embedding (DINO convention), with a 1→3 channel CT adapter.

    Args:
        img_size: the square input size the model is built for (pos_embed grid = img_size / patch_size).
        patch_size: 8 or 16 (any divisor of img_size works).
        in_chans: channels of the input tensor (1 for CT slices).
        vit_chans: channels the ViT itself takes (3, so that RGB checkpoints fit).
        adapter_kernel: kernel size of the learned in_chans→vit_chans conv (1 = per-pixel mixing).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer (tiny 192/12/3, small 384/12/6,
            base 768/12/12).
        drop_rate, attn_drop_rate, drop_path_rate: regularisation (DINO's student uses drop_path 0.1).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        vit_chans: int = 3,
        adapter_kernel: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if adapter_kernel % 2 != 1:
            raise ValueError(f"adapter_kernel must be odd (keeps the image size), got {adapter_kernel}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_features = self.embed_dim = embed_dim
        self.depth = depth
        self.input_adapter: nn.Module
        if in_chans == vit_chans and adapter_kernel == 1:
            self.input_adapter = nn.Identity()
        else:
            self.input_adapter = nn.Conv2d(in_chans, vit_chans, adapter_kernel, padding=adapter_kernel // 2)
        self.patch_embed = PatchEmbed(img_size, patch_size, vit_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [float(v) for v in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], norm_eps)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        _trunc_normal_(self.pos_embed)
        _trunc_normal_(self.cls_token)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.input_adapter, nn.Conv2d):
            # Start as channel replication: every ViT channel sees the CT slice unchanged.
            with torch.no_grad():
                self.input_adapter.weight.zero_()
                c = self.input_adapter.kernel_size[0] // 2
                self.input_adapter.weight[:, :, c, c] = 1.0 / self.in_chans
                self.input_adapter.bias.zero_()

    def interpolate_pos_encoding(self, n_tokens: int, h: int, w: int) -> Tensor:
        """Position embedding for an h×w input; the built size returns ``pos_embed`` untouched."""
        if n_tokens == self.pos_embed.shape[1] and h == w == self.img_size:
            return self.pos_embed
        gh, gw = h // self.patch_size, w // self.patch_size
        grid = self.patch_embed.grid_size
        patch = self.pos_embed[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(gh, gw), mode="bicubic", align_corners=False)
        patch = patch.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([self.pos_embed[:, :1], patch], dim=1)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        x = self.patch_embed(self.input_adapter(x))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.interpolate_pos_encoding(x.shape[1], h, w))

    def forward_features(self, x: Tensor) -> Tensor:
        """All tokens after the final norm: (B, 1 + N, D), token 0 is [CLS]."""
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """[CLS] embedding (B, D), as DINO's backbone returns it."""
        return self.forward_features(x)[:, 0]

    def get_intermediate_layers(self, x: Tensor, n: int = 1) -> list[Tensor]:
        """Normed token outputs of the last ``n`` blocks (DINO's linear evaluation uses these)."""
        if not 1 <= n <= len(self.blocks):
            raise ValueError(f"n must be in [1, {len(self.blocks)}], got {n}")
        x = self.prepare_tokens(x)
        out: list[Tensor] = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if len(self.blocks) - i <= n:
                out.append(self.norm(x))
        return out

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Attention weights of the last block (B, heads, N, N), for attention-map figures."""
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        last = self.blocks[-1]
        assert isinstance(last, Block)
        return last.attn.attention_map(last.norm1(x))


#: Prefixes that DINO / timm checkpoints put in front of backbone keys.
_CHECKPOINT_PREFIXES = ("module.", "backbone.", "encoder.")


def load_pretrained(
    model: VisionTransformer, state_dict: Mapping[str, Tensor], strict_backbone: bool = True
) -> dict[str, list[str]]:
    """Load a DINO/timm ViT state dict into ``model``, adapting it to the model's build.

    Strips ``module.``/``backbone.`` prefixes, drops classifier/DINO-head keys, resamples ``pos_embed``
    bicubically to the built grid, and, when the checkpoint's patch embedding takes 3 channels while the
    model has an adapter, leaves the adapter at its replication init. Returns the missing and unexpected
    keys; with ``strict_backbone`` any missing transformer weight raises (an adapter may be missing).
    """
    sd: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        for p in _CHECKPOINT_PREFIXES:
            k = k.removeprefix(p)
        if k.startswith(("head.", "fc.", "last_layer.", "mlp.")):
            continue
        sd[k] = v
    if "pos_embed" in sd:
        sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], model.patch_embed.grid_size)
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("input_adapter.")]
    if strict_backbone and missing:
        raise KeyError(
            f"checkpoint lacks backbone weights: {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
