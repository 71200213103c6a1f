"""Slice datasets over cases, for the three trainers.

* :class:`DinoSliceDataset` — every selected slice (labelled or not) → DINO-LG multi-crop sample; guided
  crops come from the slice's calcium mask when it has one.
* :class:`ClassifierSliceDataset` — labelled slices → (model input, calcified?) for the linear filter.
* :class:`SegmentationSliceDataset` — calcified slices plus a share of calcium-free ones → (patch,
  per-pixel artery class) for the U-Net.

Randomness is drawn from a generator seeded by (seed, epoch, index): a sample is the same whichever
worker makes it and whether or not the run was resumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from cacstream.engine.inference.candidates import CandidateRule, candidate_patches
from cacstream.kernels.config import PreprocessConfig
from cacstream.training.config import DataConfig
from cacstream.training.datasets.cases import Case
from cacstream.training.datasets.preprocess import normalise_hu, preprocess_slices, resize_labels
from torch import Tensor
from torch.utils.data import Dataset


@dataclass(frozen=True)
class SliceRef:
    """Slice ``z`` of ``cases[case]``; ``calcified`` = it holds labelled calcium."""

    case: int
    z: int
    calcified: bool


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 100_003 + index * 7 + 12345) % (2**63 - 1))
    return g


def select_slices(
    cases: Sequence[Case], data: DataConfig, *, labelled_only: bool = False, seed: int = 0
) -> list[SliceRef]:
    """Slices to train on: every ``slice_stride``-th slice plus every calcified one, capped per case
    (calcified first) by ``max_slices_per_case``."""
    rng = np.random.default_rng(seed)
    refs: list[SliceRef] = []
    for ci, case in enumerate(cases):
        if labelled_only and not case.labelled:
            continue
        calc = case.calcified_slices()
        zs = set(range(0, case.n_slices, data.slice_stride)) | set(np.flatnonzero(calc).tolist())
        chosen = sorted(zs)
        if data.max_slices_per_case and len(chosen) > data.max_slices_per_case:
            pos = [z for z in chosen if calc[z]]
            neg = [z for z in chosen if not calc[z]]
            room = max(data.max_slices_per_case - len(pos), 0)
            keep_neg = (
                sorted(rng.choice(neg, size=min(room, len(neg)), replace=False).tolist()) if room else []
            )
            chosen = sorted(pos[: data.max_slices_per_case] + keep_neg)
        refs.extend(SliceRef(ci, int(z), bool(calc[z])) for z in chosen)
    return refs


def _slice_hu(case: Case, z: int) -> np.ndarray:
    return np.asarray(case.hu[z], dtype=np.float32)


def _slice_labels(case: Case, z: int) -> np.ndarray | None:
    return None if case.labels is None else np.asarray(case.labels[z])


class DinoSliceDataset(Dataset):
    """Slices → MultiCropSample (native-grid normalisation, then crops resized to the crop sizes)."""

    def __init__(
        self,
        cases: Sequence[Case],
        refs: Sequence[SliceRef],
        preprocess: PreprocessConfig,
        augmentation: object,
        seed: int = 0,
    ) -> None:
        self.cases, self.refs, self.preprocess = list(cases), list(refs), preprocess
        self.augmentation = augmentation
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> object:
        ref = self.refs[i]
        case = self.cases[ref.case]
        img = normalise_hu(_slice_hu(case, ref.z), self.preprocess)[None]
        lab = _slice_labels(case, ref.z)
        mask = torch.from_numpy(lab > 0) if (lab is not None and ref.calcified) else None
        return self.augmentation(img, mask, sample_generator(self.seed, self.epoch, i))  # type: ignore[operator]


class ClassifierSliceDataset(Dataset):
    """Labelled slices → (input (1, S, S), target 1.0 if calcified else 0.0).

    With ``augment``, a random resized crop (area in ``crop_scale``) and flips are applied to the
    preprocessed slice; the target is then recomputed from the calcium inside the crop, so a crop that
    cuts the lesion away is labelled as what it shows.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        refs: Sequence[SliceRef],
        preprocess: PreprocessConfig,
        augment: bool = False,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        seed: int = 0,
        patch_grid: int = 0,
        candidate_grid: int = 0,
        candidate_rule: CandidateRule | None = None,
    ) -> None:
        self.cases, self.refs, self.preprocess = list(cases), list(refs), preprocess
        self.augment, self.crop_scale, self.seed, self.epoch = augment, crop_scale, seed, 0
        if (patch_grid or candidate_grid) and augment:
            raise ValueError("patch targets and candidates are defined on whole slices: they need augment = False")
        if candidate_grid and candidate_rule is None:
            raise ValueError("candidate_grid needs a candidate_rule")
        self.patch_grid = patch_grid
        self.candidate_grid, self.candidate_rule = candidate_grid, candidate_rule

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.refs)

    def targets(self) -> np.ndarray:
        return np.array([r.calcified for r in self.refs], dtype=np.float32)

    def patch_targets(self, case: Case, z: int) -> Tensor:
        """(grid²,) 1.0 where the ViT patch covers a labelled calcium pixel (adaptive max-pool of the
        native-resolution mask onto the patch grid: the whole slice is resized to the input)."""
        lab = _slice_labels(case, z)
        if lab is None:
            return torch.zeros(self.patch_grid * self.patch_grid)
        mask = torch.from_numpy(np.ascontiguousarray(lab > 0, dtype=np.float32))[None, None]
        return torch.nn.functional.adaptive_max_pool2d(mask, self.patch_grid).flatten()

    def candidates(self, case: Case, hu: np.ndarray, grid: int = 0, rule: CandidateRule | None = None) -> Tensor:
        """(grid²,) 1.0 where the patch holds a calcium candidate (``engine/inference/candidates.py``:
        a 2D component the Agatston rule could count), the serving engine's own computation. ``grid`` /
        ``rule``: this dataset's own unless given (evaluation sets gate without returning candidates)."""
        rule = rule or self.candidate_rule
        assert rule is not None
        cand = candidate_patches(hu, case.pixel_spacing_mm, self.preprocess.input_size,
                                 grid or self.candidate_grid, rule)
        return torch.from_numpy(cand.reshape(-1).astype(np.float32))

    def candidates_of(self, i: int, grid: int, rule: CandidateRule) -> Tensor:
        """:meth:`candidates` of slice ``i`` (unaugmented, as served)."""
        ref = self.refs[i]
        case = self.cases[ref.case]
        return self.candidates(case, _slice_hu(case, ref.z), grid, rule)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        """(input, target) or, with patch targets or candidates, (input, target, patch targets,
        candidates); a part that is not asked for is an empty tensor."""
        ref = self.refs[i]
        case = self.cases[ref.case]
        hu = _slice_hu(case, ref.z)
        if not self.augment:
            x = preprocess_slices(hu, self.preprocess)[0]
            if self.patch_grid or self.candidate_grid:
                none = torch.zeros(0)
                return (x, torch.tensor(float(ref.calcified)),
                        self.patch_targets(case, ref.z) if self.patch_grid else none,
                        self.candidates(case, hu) if self.candidate_grid else none)
            return x, torch.tensor(float(ref.calcified))
        from cacstream.training.dino.augment import crop_resize, random_resized_crop_box

        g = sample_generator(self.seed, self.epoch, i)
        img = normalise_hu(hu, self.preprocess)[None]
        h, w = hu.shape
        top, left, ch, cw = random_resized_crop_box(h, w, self.crop_scale, g)
        x = crop_resize(img, (top, left, ch, cw), self.preprocess.input_size, mode="bilinear")
        target = float(ref.calcified)
        if ref.calcified:
            lab = _slice_labels(case, ref.z)
            assert lab is not None
            target = float((lab[top : top + ch, left : left + cw] > 0).any())
        if float(torch.rand((), generator=g)) < 0.5:
            x = x.flip(-1)
        return x, torch.tensor(target)


#: Target value of pixels that carry no loss (torch's cross-entropy default ``ignore_index``).
IGNORE_INDEX = -100


def window_input_value(hu: float, preprocess: PreprocessConfig) -> float:
    """Model-input value of ``hu`` under a fixed-window preprocess (the map is the same for every slice)."""
    if preprocess.normalisation != "window":
        raise ValueError("a HU -> input value exists only for 'window' normalisation, not per-slice min-max")
    lo, hi = preprocess.window_hu
    return float(np.clip((hu - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0)


class SegmentationSliceDataset(Dataset):
    """Calcified slices plus ``negative_fraction`` × as many calcium-free slices (redrawn each epoch) →
    (input (1, P, P), class map (P, P) int64), P = ``train_crop`` or the whole input size."""

    def __init__(
        self,
        cases: Sequence[Case],
        positives: Sequence[SliceRef],
        negatives: Sequence[SliceRef],
        preprocess: PreprocessConfig,
        *,
        train_crop: int = 0,
        positive_crop_p: float = 0.8,
        negative_fraction: float = 0.25,
        hard_negative_crop_p: float = 0.0,
        hflip_p: float = 0.0,
        intensity_jitter: float = 0.0,
        seed: int = 0,
        train: bool = True,
        ignore_below_hu: float | None = None,
    ) -> None:
        self.cases, self.preprocess = list(cases), preprocess
        self.ignore_below_hu = ignore_below_hu
        self.positives, self.negatives = list(positives), list(negatives)
        self.train_crop, self.positive_crop_p = train_crop, positive_crop_p
        self.hard_negative_crop_p = hard_negative_crop_p
        if hard_negative_crop_p and preprocess.normalisation != "window":
            raise ValueError("hard_negative_crop_p needs the 'window' normalisation: calcium is found by its "
                             "input value, which only a fixed HU window maps one to one")
        self.hflip_p, self.intensity_jitter, self.seed, self.train = hflip_p, intensity_jitter, seed, train
        self.n_neg = min(len(self.negatives), int(round(negative_fraction * len(self.positives))))
        self.epoch = 0
        self.refs: list[SliceRef] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        negs: list[SliceRef] = []
        if self.n_neg:
            rng = np.random.default_rng(self.seed * 7919 + epoch if self.train else self.seed)
            negs = [
                self.negatives[j] for j in sorted(rng.choice(len(self.negatives), self.n_neg, replace=False))
            ]
        self.refs = self.positives + negs

    def __len__(self) -> int:
        return len(self.refs)

    def full_slice(self, ref: SliceRef) -> tuple[Tensor, Tensor]:
        case = self.cases[ref.case]
        x = preprocess_slices(_slice_hu(case, ref.z), self.preprocess)[0]
        lab = _slice_labels(case, ref.z)
        y = (
            torch.zeros(x.shape[-2:], dtype=torch.int64)
            if lab is None
            else resize_labels(torch.from_numpy(lab.astype(np.int64))[None], self.preprocess.input_size)[0]
        )
        if self.ignore_below_hu is not None:  # only calcium candidates carry a target (IGNORE_INDEX elsewhere)
            cut = window_input_value(self.ignore_below_hu, self.preprocess) - 1e-6  # float32 inputs
            y = torch.where(x[0] >= cut, y, IGNORE_INDEX)
        return x, y

    def _hard_negative_centre(self, x: Tensor, y: Tensor, g: torch.Generator) -> tuple[int, int] | None:
        """With probability ``hard_negative_crop_p``: a pixel of a random calcium component (≥ the calcium
        threshold in the input) that is not coronary, each component equally likely, so a small aortic or
        valve deposit is drawn as often as the spine; None otherwise or when the slice has none."""
        if not self.hard_negative_crop_p or float(torch.rand((), generator=g)) >= self.hard_negative_crop_p:
            return None
        from cacstream.engine.scoring.ccl import label_slice

        cut = window_input_value(self.preprocess.calcium_threshold_hu, self.preprocess) - 1e-6
        lab, n = label_slice(((x[0] >= cut) & (y == 0)).numpy(), 8)
        if n == 0:
            return None
        k = 1 + int(torch.randint(n, (), generator=g))
        rows, cols = np.nonzero(lab == k)
        j = int(torch.randint(rows.size, (), generator=g))
        return int(rows[j]), int(cols[j])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        ref = self.refs[i]
        x, y = self.full_slice(ref)
        if not self.train:
            return x, y
        g = sample_generator(self.seed, self.epoch, i)
        s = x.shape[-1]
        p = self.train_crop or s
        if p < s:
            coords = (y > 0).nonzero() if ref.calcified else None
            centre: tuple[int, int] | None
            if (
                coords is not None
                and coords.shape[0]
                and float(torch.rand((), generator=g)) < self.positive_crop_p
            ):
                cy, cx = (int(v) for v in coords[int(torch.randint(coords.shape[0], (), generator=g))])
                centre = (cy, cx)
            else:
                centre = self._hard_negative_centre(x, y, g)
            if centre is not None:  # a patch holding that pixel
                cy, cx = centre
                top = int(torch.randint(max(cy - p + 1, 0), min(cy, s - p) + 1, (), generator=g))
                left = int(torch.randint(max(cx - p + 1, 0), min(cx, s - p) + 1, (), generator=g))
            else:
                top = int(torch.randint(0, s - p + 1, (), generator=g))
                left = int(torch.randint(0, s - p + 1, (), generator=g))
            x, y = x[:, top : top + p, left : left + p], y[top : top + p, left : left + p]
        if self.hflip_p and float(torch.rand((), generator=g)) < self.hflip_p:
            x, y = x.flip(-1), y.flip(-1)
        if self.intensity_jitter:
            j = self.intensity_jitter
            b = 1 + (2 * float(torch.rand((), generator=g)) - 1) * j
            c = 1 + (2 * float(torch.rand((), generator=g)) - 1) * j
            x01 = (x + 1) / 2
            x01 = ((x01 * b - (x01 * b).mean()) * c + (x01 * b).mean()).clamp(0, 1)
            x = x01 * 2 - 1
        return x.contiguous(), y.contiguous()
