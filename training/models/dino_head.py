"""DINO projection head and the multi-crop wrapper (facebookresearch/dino, ``vision_transformer.py`` /
``utils.py``), with DINO-compatible parameter names.

The last layer is weight-normalised by hand (``weight_g`` / ``weight_v``, the names of the old
``nn.utils.weight_norm`` that DINO checkpoints carry) rather than through torch's parametrisation API,
whose state-dict names differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from cacstream.training.models.vit import _trunc_normal_
from torch import Tensor, nn


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight = g · v / ‖v‖ (row-wise), as ``nn.utils.weight_norm(dim=0)``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        v = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(v, a=5**0.5)  # nn.Linear's default init, which DINO's last layer keeps
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))

    @property
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP (in → hidden → hidden → bottleneck, GELU) → L2 normalise → weight-normed linear → out_dim.

    Args:
        in_dim: backbone embedding size.
        out_dim: number of prototypes K (65536 in DINO; a few thousand is enough for small data).
        norm_last_layer: freeze the weight-norm gain at 1 (DINO's default; stabilises ViT-B training).
        nlayers, hidden_dim, bottleneck_dim: 3, 2048, 256 in DINO and DINO-LG.
        use_bn: batch norm between MLP layers (off for ViTs).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        self.mlp: nn.Module
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal_(m.weight)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """Backbone + head over crops of several resolutions: one backbone pass per resolution group.

    ``forward`` takes a list of (n_i, C, H_i, W_i) tensors; consecutive tensors of the same size are
    concatenated and run together (DINO's ``unique_consecutive`` trick), then all embeddings go through
    the head in one call. Output rows follow the input order.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[Tensor] | Tensor) -> Tensor:
        if isinstance(crops, Tensor):
            crops = [crops]
        groups: list[list[Tensor]] = []
        for c in crops:
            if c.shape[0] == 0:
                continue
            if groups and groups[-1][0].shape[-2:] == c.shape[-2:]:
                groups[-1].append(c)
            else:
                groups.append([c])
        feats = [self.backbone(torch.cat(g) if len(g) > 1 else g[0]) for g in groups]
        return self.head(torch.cat(feats) if len(feats) > 1 else feats[0])
