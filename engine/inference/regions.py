"""Segmentation regions: the U-Net runs only on the parts of a slice whose filter patches were flagged.

The DINO-LG paper filters whole slices: a flagged slice is segmented over its whole area. A
``patch_max`` slice filter already decides per patch (its slice logit is the maximum of its G×G
patch logits), so the engine can go one step further and segment only around the patches that pass
the same threshold:

* the slice is cut into a grid of square *cores* of ``core_patches`` × ``core_patches`` filter
  patches (128 × 128 served pixels for the shipped 8×8 grid over 512²);
* a core is segmented when one of its patches is flagged: the U-Net sees the core plus a ``halo_px``
  margin of context on each side (zero padding past the slice's edge, i.e. air after the window
  normalisation) and only its core's labels are kept, so every pixel gets its label from exactly one
  tile;
* pixels of cores with no flagged patch are background.

A plaque straddling the border between a segmented core and an unsegmented one is cut there: only its
part inside the segmented core is labelled, and the claim rule (``scoring/claims.py``) may exclude it
as calcium the U-Net split (held-out phantom 5003: a true RCA plaque lost that way). Mode
``components`` (with a candidate gate, ``candidates.py``) also segments every patch that a calcium
component of a flagged patch reaches, so nothing is cut. It is not the default, by measurement
(docs/models.md, "Whole components"): on the 40 development phantoms it scored 80 % of risk categories
right against 82.5 %, because the border cut also removes aortic and bone calcium the U-Net labels,
which the claim rule then catches; and it segments about twice the area (1.3× the seconds).

Why it is the default (measured on held-out phantoms, see docs/models.md): the U-Net does
~0.4 of the whole-slice work on a flagged slice, and most of its false positives (ribs, spine,
sternum, aortic wall, far from any flagged patch) disappear, while the coronary calcium it finds is
the same or more. The U-Net was trained on 192² crops, so a 160² tile is within what it has seen.

Weights whose filter has no patch logits (other read-outs, graphs exported before this existed)
are segmented over the whole slice, and the report says which rule ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

RegionMode = Literal["patches", "components", "slice"]
REGION_MODES: tuple[str, ...] = ("patches", "components", "slice")


@dataclass(frozen=True)
class RegionConfig:
    """Which parts of a flagged slice the segmenter sees.

    Attributes:
        mode: ``patches`` (recommended): the cores around flagged filter patches; ``components``:
            those and the cores the calcium components of flagged patches reach (with a candidate
            gate; no lesion is cut at a core border); ``slice``: the whole slice, as in the paper (and
            for weights without patch logits).
        core_patches: a core's side in filter patches (2: 128 px of a 512² slice).
        halo_px: context around a core, in served pixels (16: a 160² tile).
    """

    mode: RegionMode = "patches"
    core_patches: int = 2
    halo_px: int = 16

    def __post_init__(self) -> None:
        if self.mode not in REGION_MODES:
            raise ValueError(f"segment regions must be one of {REGION_MODES}, got {self.mode!r}")
        if self.core_patches < 1:
            raise ValueError(f"core_patches must be >= 1, got {self.core_patches}")
        if self.halo_px < 0:
            raise ValueError(f"halo_px must be >= 0, got {self.halo_px}")


@dataclass(frozen=True)
class TileGrid:
    """The tiling of one served slice size: ``cells`` × ``cells`` cores of ``core`` px, ``tile`` px each."""

    served: int  # served slice side (the segmenter's input size)
    core: int
    halo: int
    cells: int  # cores per side
    patches_per_cell: int

    @property
    def tile(self) -> int:
        return self.core + 2 * self.halo

    def describe(self) -> str:
        return f"filter patches: {self.core} px cores + {self.halo} px context ({self.tile}² tiles of {self.served}²)"


def tile_grid(config: RegionConfig, patch_grid: int | None, served: int) -> TileGrid | None:
    """The grid for these weights, or None when region segmentation cannot run (mode ``slice``, no
    patch logits, or a patch grid that does not divide the served slice into whole cores)."""
    if config.mode == "slice" or not patch_grid or patch_grid % config.core_patches:
        return None
    cells = patch_grid // config.core_patches
    if served % cells:
        return None
    return TileGrid(served, served // cells, config.halo_px, cells, config.core_patches)


def split_filter_logits(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Served filter output → (slice logits (N,), patch logits (N, G, G) or None).

    (N,) is a filter without patch logits; (N, 1 + G²) holds the slice logit then the patches."""
    a = np.asarray(logits, dtype=np.float32)
    if a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1):
        return a.reshape(-1), None
    if a.ndim != 2:
        raise ValueError(f"slice-filter output of shape {a.shape}: expected (N,) or (N, 1 + G²)")
    g = round((a.shape[1] - 1) ** 0.5)
    if g * g != a.shape[1] - 1:
        raise ValueError(f"slice-filter output of shape {a.shape}: {a.shape[1] - 1} patch logits are not a square grid")
    return np.ascontiguousarray(a[:, 0]), a[:, 1:].reshape(-1, g, g)


def cells_to_run(patch_flags: np.ndarray, grid: TileGrid) -> np.ndarray:
    """(G, G) flagged patches → (cells, cells) cores to segment (any flagged patch inside)."""
    k = grid.patches_per_cell
    c = grid.cells
    return np.asarray(patch_flags, dtype=bool).reshape(c, k, c, k).any(axis=(1, 3))


def plan_tiles(regions: list[np.ndarray], grid: TileGrid) -> list[tuple[int, int, int]]:
    """(slice index in the batch, cell row, cell column) of every tile to run, slice-major."""
    plan: list[tuple[int, int, int]] = []
    for i, flags in enumerate(regions):
        for r, c in zip(*np.nonzero(cells_to_run(flags, grid))):
            plan.append((i, int(r), int(c)))
    return plan


def cut_tiles(model_input: Any, plan: list[tuple[int, int, int]], grid: TileGrid) -> Any:
    """Tiles (T, C, tile, tile) of a preprocessed batch (N, C, S, S), in ``plan`` order (not empty), on
    the input's device; the halo past the slice edge is zero."""
    from cacstream.engine.backends.base import array_family

    if not plan:
        raise ValueError("no tiles to cut")
    h, k, t = grid.halo, grid.core, grid.tile
    family = array_family(model_input)
    if family.startswith("torch"):
        import torch
        import torch.nn.functional as F

        padded = F.pad(model_input, (h, h, h, h)) if h else model_input
        return torch.stack([padded[i, :, r * k: r * k + t, c * k: c * k + t] for i, r, c in plan]).contiguous()
    xp: Any = np
    if family == "cupy":
        import cupy as xp
    padded = xp.pad(model_input, ((0, 0), (0, 0), (h, h), (h, h))) if h else model_input
    return xp.ascontiguousarray(xp.stack([padded[i, :, r * k: r * k + t, c * k: c * k + t] for i, r, c in plan]))


def paste_cores(tile_labels: np.ndarray, plan: list[tuple[int, int, int]], n: int, grid: TileGrid) -> np.ndarray:
    """(N, S, S) uint8 labels: each tile's core where it ran, background elsewhere."""
    out = np.zeros((n, grid.served, grid.served), np.uint8)
    h, k = grid.halo, grid.core
    for (i, r, c), lab in zip(plan, tile_labels):
        out[i, r * k:(r + 1) * k, c * k:(c + 1) * k] = lab[h:h + k, h:h + k]
    return out


def resized_onnx(src: Path, dst: Path, size: int) -> Path:
    """Write a copy of the fully convolutional segmenter graph ``src`` whose input and output take
    ``size``² slices (the tile) instead of the size it was exported at.

    Only the declared shapes of the graph's input and outputs change (batch stays dynamic) and the
    stored intermediate shapes are dropped for the runtime to infer again; every node and weight is
    kept, so a Q/DQ INT8 graph stays INT8. Refused (ValueError naming the file) when the graph has
    nodes whose result can depend on a fixed size (Reshape, Flatten, Expand, Tile, Resize to sizes)."""
    import onnx

    model = onnx.load(str(src))
    fixed = {n.op_type for n in model.graph.node} & {"Reshape", "Flatten", "Expand", "Tile"}
    fixed |= {"Resize" for n in model.graph.node if n.op_type == "Resize" and len(n.input) > 3 and n.input[3]}
    if fixed:
        raise ValueError(f"{src}: the segmenter graph holds {sorted(fixed)} nodes; it cannot be resized to {size}² tiles")
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) != 4:
            raise ValueError(f"{src}: {v.name} has rank {len(dims)}, expected (N, C, H, W)")
        dims[2].Clear()
        dims[2].dim_value = size
        dims[3].Clear()
        dims[3].dim_value = size
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    return dst
