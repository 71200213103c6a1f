"""The slice filter: a frozen DINO-LG backbone, a feature read-out, and one linear layer (paper §3.3).

Feature read-outs (recorded in the weights' ``config.json`` so serving reads the same vector):

* ``cls`` — the final [CLS] embedding (768-d for ViT-B; the paper's choice, the default).
* ``cls_avgpool`` — [CLS] concatenated with the average of the patch tokens of the last block (DINO's
  linear evaluation for ViT-B); doubles the width and helps when the object is a few patches in size.
* ``last_blocks`` — [CLS] of the last ``n_last_blocks`` blocks concatenated (DINO's linear evaluation
  for ViT-S uses 4), optionally with the avg-pooled patch tokens (``avgpool``).

* ``patch_max`` — one linear layer applied to every last-block patch token, the slice logit is the
  maximum over the patches (multiple-instance read-out: a slice holds calcium when one of its patches
  does). The layer is trained on the per-patch calcium labels and the slice label at once, so the
  label maps guide the exact function that is served. Not in the paper; recommended when the backbone
  is fine-tuned on a CPU budget (docs/models.md).

Any of the first three modes may add ``maxpool``: the channel-wise maximum over the patch tokens of each block it reads
(the last block, or each of the last ``n_last_blocks``), appended after the other parts. Calcium is a
few pixels of a 224² slice, i.e. one or two of 196 patch tokens: averaging dilutes that token ~200
times, the maximum keeps it, so a linear layer can answer "does any patch look like calcium?".

``input_pool`` > 1 puts a fixed ``input_pool``×``input_pool`` max-pool in front of the backbone: the
filter is served 512² slices and its ViT sees a 128² one (``input_pool`` 4). A max-pool keeps a
calcification's full contrast however small it is, where a bilinear resize to 224² averages it into
its neighbours (docs/models.md measures 10-28 % of calcified phantom slices whose lesion falls below
130 HU that way). It is part of the exported graph, so every backend runs the same front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from cacstream.training.models.vit import VisionTransformer
from torch import Tensor, nn

FeatureMode = Literal["cls", "cls_avgpool", "last_blocks", "patch_max"]


@dataclass(frozen=True)
class FeatureSpec:
    """Which backbone outputs form the classifier's input vector."""

    mode: FeatureMode = "cls"
    n_last_blocks: int = 1
    avgpool: bool = False
    maxpool: bool = False
    input_pool: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.input_pool <= 16:
            raise ValueError(f"input_pool must be in 1..16, got {self.input_pool}")
        if self.mode not in ("cls", "cls_avgpool", "last_blocks", "patch_max"):
            raise ValueError(
                f"feature mode must be cls, cls_avgpool, last_blocks or patch_max, got {self.mode!r}"
            )
        if self.mode == "patch_max" and (self.maxpool or self.avgpool):
            raise ValueError("patch_max reads every patch token: maxpool/avgpool do not apply")
        if self.n_last_blocks < 1:
            raise ValueError(f"n_last_blocks must be >= 1, got {self.n_last_blocks}")
        if self.mode != "last_blocks" and self.n_last_blocks != 1:
            raise ValueError("n_last_blocks only applies to mode 'last_blocks'")

    def dim(self, embed_dim: int) -> int:
        """Width of the feature vector (per patch token for ``patch_max``) for a backbone of ``embed_dim``."""
        if self.mode in ("cls", "patch_max"):
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
            "input_pool": self.input_pool,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(
            mode=d.get("mode", "cls"),
            n_last_blocks=int(d.get("n_last_blocks", 1)),
            avgpool=bool(d.get("avgpool", False)),
            maxpool=bool(d.get("maxpool", False)),
            input_pool=int(d.get("input_pool", 1)),
        )


def extract_features(backbone: VisionTransformer, x: Tensor, spec: FeatureSpec) -> Tensor:
    """The (B, spec.dim(D)) feature vector of a batch of slices (B, 1, S, S); (B, N, D) patch tokens
    for ``patch_max``."""
    return features_and_patch_tokens(backbone, x, spec)[0]


def features_and_patch_tokens(backbone: VisionTransformer, x: Tensor, spec: FeatureSpec) -> tuple[Tensor, Tensor]:
    """:func:`extract_features` plus the last block's normalised patch tokens (B, N, D), from one
    forward pass (the trainer's per-patch calcium guidance reads them)."""
    if spec.input_pool > 1:
        x = F.max_pool2d(x, spec.input_pool)
    if spec.mode == "last_blocks":
        layers = backbone.get_intermediate_layers(x, spec.n_last_blocks)
        parts = [t[:, 0] for t in layers]
        if spec.avgpool:
            parts.append(layers[-1][:, 1:].mean(dim=1))
    else:
        tokens = backbone.forward_features(x)
        if spec.mode == "patch_max":
            return tokens[:, 1:], tokens[:, 1:]
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


#: Slice logit of a slice without any calcium candidate under the candidate gate (sigmoid: 0). Finite,
#: so a loss that sees it stays finite; the engine uses -inf for the same decision.
NO_CANDIDATE_LOGIT = -1e4


def gated_max(patch_logits: Tensor, candidates: Tensor) -> Tensor:
    """(B,) maximum of the (B, N) patch logits over the patches whose ``candidates`` entry is non-zero
    (the candidate gate, engine/inference/candidates.py); NO_CANDIDATE_LOGIT for a slice with none."""
    floor = torch.full_like(patch_logits, NO_CANDIDATE_LOGIT)
    return torch.where(candidates > 0, patch_logits, floor).amax(dim=-1)


class PatchMaxHead(LinearHead):
    """The ``patch_max`` read-out: the linear layer on every patch token (B, N, D), max over N (over
    the candidate patches only, when ``candidates`` (B, N) are given)."""

    def patch_logits(self, tokens: Tensor) -> Tensor:
        """(B, N) per-patch logits: the training target is "this patch holds labelled calcium"."""
        return self.linear(tokens).squeeze(-1)

    def forward(self, feats: Tensor, candidates: Tensor | None = None) -> Tensor:
        logits = self.patch_logits(feats)
        return logits.amax(dim=-1) if candidates is None else gated_max(logits, candidates)


def make_head(spec: FeatureSpec, embed_dim: int) -> LinearHead:
    """The linear layer that ``spec``'s read-out needs."""
    cls = PatchMaxHead if spec.mode == "patch_max" else LinearHead
    return cls(spec.dim(embed_dim))


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


class ServedSliceFilter(nn.Module):
    """What serving runs (ONNX, TensorRT, the torch backend): a ``patch_max`` filter also returns its
    per-patch logits, so the engine can segment only the regions the filter flagged.

    Output (B, 1 + G²): column 0 is the slice logit (the maximum of the others, exactly the training
    module's output), columns 1.. are the G×G patch logits in raster order (row-major over the
    slice). One output tensor, not two, so every backend's one-input/one-output contract holds.
    Other read-outs have no patch logits and keep the (B,) output.
    """

    def __init__(self, model: SliceFilter) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        feats = self.model.features(x)
        head = self.model.head
        if isinstance(head, PatchMaxHead):
            patches = head.patch_logits(feats)
            return torch.cat([patches.amax(dim=-1, keepdim=True), patches], dim=-1)
        return head(feats)


def served_filter(model: SliceFilter) -> nn.Module:
    """The module to export / serve for ``model`` (see :class:`ServedSliceFilter`)."""
    served = ServedSliceFilter(model)
    served.train(model.training)
    return served


def patch_grid(model: SliceFilter) -> int | None:
    """G for a ``patch_max`` filter (its patch logits cover the slice as a G×G grid), else None."""
    if not isinstance(model.head, PatchMaxHead):
        return None
    img = int(model.backbone.img_size)
    patch = int(model.backbone.patch_size)
    return img // patch


def served_output_spec(model: SliceFilter) -> dict[str, object]:
    """The ``output`` entry of the weights' config.json for the served filter of ``model``."""
    g = patch_grid(model)
    if g is None:
        return {"name": "logits", "shape": ["batch"],
                "meaning": "calcified-slice logit; flag when sigmoid(logit) >= threshold"}
    return {"name": "logits", "shape": ["batch", 1 + g * g], "patch_grid": [g, g],
            "meaning": "column 0: calcified-slice logit (flag when sigmoid(logit) >= threshold); columns 1..: "
                       f"the {g}x{g} patch logits, row-major over the slice (the engine segments only the "
                       "regions whose patches pass the same threshold)"}

