"""The slice filter: a frozen DINO-LG backbone, a feature read-out, and one linear layer (paper §3.3).

Feature read-outs (recorded in the weights' ``config.json`` so serving reads the same vector):

* ``cls`` — the final [CLS] embedding (768-d for ViT-B; the paper's choice, the default).
* ``cls_avgpool`` — [CLS] concatenated with the average of the patch tokens of the last block (DINO's
  linear evaluation for ViT-B); doubles the width and helps when the object is a few patches in size.
* ``last_blocks`` — [CLS] of the last ``n_last_blocks`` blocks concatenated (DINO's linear evaluation
  for ViT-S uses 4), optionally with the avg-pooled patch tokens (``avgpool``).

Any mode may add ``maxpool``: the channel-wise maximum over the patch tokens of each block it reads
(the last block, or each of the last ``n_last_blocks``), appended after the other parts. Calcium is a
few pixels of a 224² slice, i.e. one or two of 196 patch tokens: averaging dilutes that token ~200
times, the maximum keeps it, so a linear layer can answer "does any patch look like calcium?".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from cacstream.training.models.vit import VisionTransformer
from torch import Tensor, nn

FeatureMode = Literal["cls", "cls_avgpool", "last_blocks"]


@dataclass(frozen=True)
class FeatureSpec:
    """Which backbone outputs form the classifier's input vector."""

    mode: FeatureMode = "cls"
    n_last_blocks: int = 1
    avgpool: bool = False
    maxpool: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("cls", "cls_avgpool", "last_blocks"):
            raise ValueError(f"feature mode must be cls, cls_avgpool or last_blocks, got {self.mode!r}")
        if self.n_last_blocks < 1:
            raise ValueError(f"n_last_blocks must be >= 1, got {self.n_last_blocks}")
        if self.mode != "last_blocks" and self.n_last_blocks != 1:
            raise ValueError("n_last_blocks only applies to mode 'last_blocks'")

    def dim(self, embed_dim: int) -> int:
        """Width of the feature vector for a backbone of ``embed_dim``."""
        if self.mode == "cls":
            base = embed_dim
        elif self.mode == "cls_avgpool":
            base = 2 * embed_dim
        else:
            base = embed_dim * (self.n_last_blocks + (1 if self.avgpool else 0))
        return base + (embed_dim * self.n_blocks if self.maxpool else 0)

    @property
    def n_blocks(self) -> int:
        """How many blocks' outputs the read-out uses (1 unless mode is last_blocks)."""
        return self.n_last_blocks if self.mode == "last_blocks" else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "n_last_blocks": self.n_last_blocks,
            "avgpool": self.avgpool,
            "maxpool": self.maxpool,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(
            mode=d.get("mode", "cls"),
            n_last_blocks=int(d.get("n_last_blocks", 1)),
            avgpool=bool(d.get("avgpool", False)),
            maxpool=bool(d.get("maxpool", False)),
        )


def extract_features(backbone: VisionTransformer, x: Tensor, spec: FeatureSpec) -> Tensor:
    """The (B, spec.dim(D)) feature vector of a batch of slices (B, 1, S, S)."""
    return features_and_patch_tokens(backbone, x, spec)[0]


def features_and_patch_tokens(backbone: VisionTransformer, x: Tensor, spec: FeatureSpec) -> tuple[Tensor, Tensor]:
    """:func:`extract_features` plus the last block's normalised patch tokens (B, N, D), from one
    forward pass (the trainer's per-patch calcium guidance reads them)."""
    if spec.mode == "last_blocks":
        layers = backbone.get_intermediate_layers(x, spec.n_last_blocks)
        parts = [t[:, 0] for t in layers]
        if spec.avgpool:
            parts.append(layers[-1][:, 1:].mean(dim=1))
    else:
        tokens = backbone.forward_features(x)
        layers = [tokens]
        parts = [tokens[:, 0]]
        if spec.mode == "cls_avgpool":
            parts.append(tokens[:, 1:].mean(dim=1))
    if spec.maxpool:
        parts.extend(t[:, 1:].amax(dim=1) for t in layers)
    feats = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return feats, layers[-1][:, 1:]


class LinearHead(nn.Module):
    """One fully connected layer to a single logit (calcified slice), DINO's linear-eval init."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 1)
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, feats: Tensor) -> Tensor:
        return self.linear(feats).squeeze(-1)


class SliceFilter(nn.Module):
    """Backbone + read-out + linear head: preprocessed slices (B, 1, S, S) → logits (B,).

    This is the module that is exported to ONNX and served; a logit above ``logit(threshold)`` flags
    the slice for segmentation.
    """

    def __init__(self, backbone: VisionTransformer, head: LinearHead, spec: FeatureSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = spec

    def features(self, x: Tensor) -> Tensor:
        return extract_features(self.backbone, x, self.spec)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
