"""timm-style model registry: ``create_model("vit_small_patch16", img_size=224)``.

A weights folder records the architecture as (name, kwargs); :func:`create_model` rebuilds exactly that
module, so serving never needs the training code's configuration files. Keyword arguments override the
registered defaults (e.g. ``depth=2`` for a CI-sized model) and are kept on the module as
``arch_name`` / ``arch_kwargs``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cacstream.training.models.unet import UNet
from cacstream.training.models.vit import VisionTransformer
from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its builder, its default keyword arguments and what it is for."""

    name: str
    family: str  # "vit" (backbone for the slice filter) or "unet" (segmenter)
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, family: str, builder: Callable[..., nn.Module], description: str = "", **defaults: Any
) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelEntry(name, family, builder, dict(defaults), description)


_VIT_WIDTHS = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}
for _w, _dims in _VIT_WIDTHS.items():
    for _p in (8, 16):
        register_model(
            f"vit_{_w}_patch{_p}",
            "vit",
            VisionTransformer,
            f"ViT-{_w[0].upper()}/{_p} (DINO widths), 1→3 channel CT adapter",
            img_size=224,
            patch_size=_p,
            in_chans=1,
            mlp_ratio=4.0,
            qkv_bias=True,
            **_dims,
        )

_UNET_FILTERS = {"tiny": 8, "small": 16, "medium": 32, "base": 64}
for _w, _f in _UNET_FILTERS.items():
    register_model(
        f"unet_{_w}",
        "unet",
        UNet,
        f"2D U-Net, {_f} initial filters, depth 4 ({'paper' if _f == 64 else 'CPU'} profile)",
        in_chans=1,
        base_filters=_f,
        depth=4,
        norm="batch",
    )


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered names matching a shell pattern (and family), sorted."""
    return sorted(
        n
        for n, e in _REGISTRY.items()
        if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)
    )


def model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None


def resolved_kwargs(name: str, **kwargs: Any) -> dict[str, Any]:
    """The registered defaults of ``name`` updated by ``kwargs`` (what the module is built with)."""
    entry = model_entry(name)
    out = dict(entry.defaults)
    out.update(kwargs)
    return out


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``kwargs`` override its defaults. Unknown kwargs raise TypeError."""
    entry = model_entry(name)
    kw = resolved_kwargs(name, **kwargs)
    try:
        model = entry.builder(**kw)
    except TypeError as e:
        raise TypeError(f"cannot build {name!r} with {sorted(kwargs)}: {e}") from e
    model.arch_name = name  # type: ignore[assignment]
    model.arch_kwargs = dict(kwargs)  # type: ignore[assignment]
    model.arch_family = entry.family  # type: ignore[assignment]
    return model
