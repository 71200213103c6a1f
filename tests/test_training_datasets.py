"""Training data: case files, patient-level splits, preprocessing parity with the kernels' numpy
reference, and the three slice datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _synthetic_ct import make_case, write_cases
from cacstream.kernels.config import PreprocessConfig
from cacstream.training.config import DataConfig, SourceConfig, SplitConfig
from cacstream.training.datasets.cases import (
    Case,
    CaseError,
    load_case_dir,
    load_npz_case,
    save_case_dir,
    save_npz_case,
)
from cacstream.training.datasets.preprocess import normalise_hu, preprocess_slices
from cacstream.training.datasets.slices import (
    ClassifierSliceDataset,
    SegmentationSliceDataset,
    select_slices,
)
from cacstream.training.datasets.sources import SourceError, iter_source
from cacstream.training.datasets.splits import Split, SplitError, assert_disjoint, split_patients


def test_npz_and_case_dir_round_trip(tmp_path: Path) -> None:
    case = make_case(3)
    back = load_npz_case(save_npz_case(case, tmp_path / "c.npz"))
    np.testing.assert_array_equal(back.hu, case.hu)
    np.testing.assert_array_equal(back.labels, case.labels)
    assert (back.patient_id, back.pixel_spacing_mm) == (case.patient_id, case.pixel_spacing_mm)
    d = save_case_dir(case, tmp_path / "cache")
    mm = load_case_dir(d)
    assert isinstance(mm.hu, np.memmap)
    np.testing.assert_allclose(mm.hu, case.hu)  # float HU stays float32 exactly
    np.testing.assert_array_equal(mm.calcified_slices(), case.calcified_slices())
    integral = Case("i", "p", np.round(case.hu), case.labels, (0.5, 0.5))
    assert load_case_dir(save_case_dir(integral, tmp_path / "cache")).hu.dtype == np.int16


def test_bad_case_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, hu=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(CaseError, match="bad.npz.*pixel_spacing_mm"):
        load_npz_case(bad)
    lab = tmp_path / "lab.npz"
    np.savez(
        lab,
        hu=np.zeros((2, 4, 4), np.float32),
        labels=np.full((2, 4, 4), 7, np.uint8),
        pixel_spacing_mm=np.array([0.5, 0.5]),
    )
    with pytest.raises(CaseError, match="lab.npz.*label value 7"):
        load_npz_case(lab)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CaseError, match="junk.npz"):
        load_npz_case(junk)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "case.json").write_text(
        '{"patient_id": "p", "pixel_spacing_mm": [1, 1], "has_labels": false}'
    )
    with pytest.raises(CaseError, match="half.*hu.npy"):
        load_case_dir(tmp_path / "half")
    with pytest.raises(SourceError, match="no .npz"):
        list(iter_source(SourceConfig(kind="npz", path=str(tmp_path / "half"))))


@pytest.mark.parametrize("stratify", [False, True])
def test_splits_are_patient_level_disjoint_and_deterministic(stratify: bool) -> None:
    patients = [f"p{i:03d}" for i in range(200)]
    calcified = {p: i % 3 == 0 for i, p in enumerate(patients)}
    cfg = SplitConfig(val_fraction=0.15, test_fraction=0.1, seed=7, stratify=stratify)
    split = split_patients(patients, cfg, calcified)
    assert_disjoint(split)
    assert sorted(split.train + split.val + split.test) == patients
    assert split == split_patients(list(reversed(patients)), cfg, calcified)
    assert 15 <= len(split.test) <= 30 and 20 <= len(split.val) <= 45
    if stratify:
        for name in ("train", "val", "test"):
            share = np.mean([calcified[p] for p in split.of(name)])
            assert abs(share - 1 / 3) < 0.06


def test_hash_split_is_the_same_for_every_stage() -> None:
    """A patient's split does not depend on which other patients a stage sees (DINO sees more)."""
    cfg = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=1, stratify=False)
    labelled = [f"coca-{i}" for i in range(30)]
    everyone = labelled + [f"nongated-{i}" for i in range(50)]
    a, b = split_patients(labelled, cfg), split_patients(everyone, cfg)
    for p in labelled:
        assert a.where(p) == b.where(p)


def test_explicit_split_and_overlap_error() -> None:
    s = split_patients(["a", "b", "c"], SplitConfig(train=["a"], val=["b"], test=["c"]))
    assert s.method == "explicit" and s.where("b") == "val"
    with pytest.raises(SplitError, match="both train and val"):
        split_patients(["a"], SplitConfig(train=["a"], val=["a"]))
    with pytest.raises(SplitError):
        assert_disjoint(Split(("a",), (), ("a",), "x"))


@pytest.mark.parametrize("normalisation", ["minmax", "window"])
@pytest.mark.parametrize("antialias", [True, False])
def test_preprocessing_equals_kernels_reference(normalisation: str, antialias: bool) -> None:
    from cacstream.kernels import reference
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 400, (3, 64, 80)).astype(np.float32)
    hu[0, 5:9, 5:9] = 1500.0
    cfg = PreprocessConfig(
        normalisation=normalisation, input_size=32, antialias=antialias, window_hu=(-200, 600)
    )
    expected = reference.preprocess(hu, config=cfg).model_input
    got = preprocess_slices(hu, cfg).numpy()
    assert got.shape == expected.shape == (3, 1, 32, 32)
    np.testing.assert_allclose(got, expected.astype(np.float32), atol=2e-5)


def test_minmax_normalisation_is_the_papers() -> None:
    hu = np.array([[[-1024.0, 0.0], [976.0, 3071.0]]], np.float32)
    out = normalise_hu(hu, PreprocessConfig()).numpy()
    expected = (hu - hu.min()) / (hu.max() - hu.min() + 1e-7) * 2 - 1
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert (
        float(normalise_hu(np.full((1, 4, 4), 40.0), PreprocessConfig()).abs().max()) == 1.0
    )  # constant -> -1


def test_slice_selection_keeps_calcified_slices_and_caps() -> None:
    cases = [make_case(s, slices=12) for s in range(3)]
    refs = select_slices(cases, DataConfig(slice_stride=4))
    for ci, case in enumerate(cases):
        zs = {r.z for r in refs if r.case == ci}
        assert set(np.flatnonzero(case.calcified_slices())) <= zs
        assert {0, 4, 8} <= zs
    capped = select_slices(cases, DataConfig(max_slices_per_case=3), seed=1)
    assert max(sum(r.case == ci for r in capped) for ci in range(3)) <= 3
    assert all(r.calcified == cases[r.case].calcified_slices()[r.z] for r in capped)


def test_classifier_dataset_targets_and_augmented_crops() -> None:
    cases = [make_case(s, size=48, slices=8) for s in range(2)]
    refs = select_slices(cases, DataConfig())
    pre = PreprocessConfig(input_size=32)
    ds = ClassifierSliceDataset(cases, refs, pre)
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and float(y) == float(refs[0].calcified)
    aug = ClassifierSliceDataset(cases, refs, pre, augment=True, crop_scale=(0.05, 0.1))
    for i, r in enumerate(refs):
        _, ya = aug[i]
        if not r.calcified:
            assert float(ya) == 0.0  # a crop cannot create calcium


def test_segmentation_dataset_patches_hold_calcium_and_negatives_rotate() -> None:
    cases = [make_case(s, size=64, slices=10) for s in range(3)]
    refs = select_slices(cases, DataConfig())
    pos = [r for r in refs if r.calcified]
    neg = [r for r in refs if not r.calcified]
    ds = SegmentationSliceDataset(
        cases,
        pos,
        neg,
        PreprocessConfig(input_size=64),
        train_crop=32,
        positive_crop_p=1.0,
        negative_fraction=0.5,
        seed=0,
    )
    assert len(ds) == len(pos) + round(0.5 * len(pos))
    for i in range(len(pos)):
        x, y = ds[i]
        assert x.shape == (1, 32, 32) and y.shape == (32, 32) and y.dtype == torch.int64
        assert int((y > 0).sum()) > 0
    first = [r.z for r in ds.refs[len(pos) :]]
    ds.set_epoch(1)
    assert [r.z for r in ds.refs[len(pos) :]] != first or len(neg) <= ds.n_neg
    full = SegmentationSliceDataset(cases, pos, neg, PreprocessConfig(input_size=64), train=False)
    x, y = full[0]
    case = cases[pos[0].case]
    np.testing.assert_array_equal(y.numpy(), case.labels[pos[0].z])


def test_npz_source_reads_every_case(tmp_path: Path) -> None:
    write_cases(tmp_path, range(3))
    cases = list(iter_source(SourceConfig(kind="npz", path=str(tmp_path))))
    assert [c.patient_id for c in cases] == ["patient-0", "patient-1", "patient-2"]
    unl = list(iter_source(SourceConfig(kind="npz", path=str(tmp_path), use_labels=False)))
    assert all(c.labels is None for c in unl)


def test_phantom_source_generates_and_caches(tmp_path: Path) -> None:
    pytest.importorskip("cacstream.training.phantom")
    src = SourceConfig(
        kind="phantom", seeds=[5, 1], phantom={"matrix": 64}, cache_dir=str(tmp_path / "cache")
    )
    (first,) = list(iter_source(src))
    assert first.patient_id == "phantom-5" and first.hu.shape[1:] == (64, 64)
    assert first.labels is not None and first.labels.shape == first.hu.shape
    assert (tmp_path / "cache" / "phantom-5" / "case.json").is_file()
    (again,) = list(iter_source(src))  # served from the cache, memory-mapped
    assert isinstance(again.hu, np.memmap)
    np.testing.assert_allclose(again.hu, first.hu)
    np.testing.assert_array_equal(again.labels, first.labels)


def test_coca_source_reads_gated_patients_with_labels(coca_root: Path) -> None:
    from cacstream.training.data import coca

    pid = coca.list_gated_patients(coca_root)[0]
    (case,) = list(iter_source(SourceConfig(kind="coca", path=str(coca_root), patients=[pid])))
    assert case.patient_id == f"coca-gated-{pid}" and case.labels is not None
    assert case.hu.shape == case.labels.shape and case.calcified_slices().any()
    assert case.pixel_spacing_mm[0] > 0


def test_segmentation_targets_only_on_calcium_candidates() -> None:
    """loss_on_candidates: pixels below 130 HU carry IGNORE_INDEX, the others keep their label."""
    from cacstream.training.datasets.slices import IGNORE_INDEX, window_input_value

    cases = [make_case(s, size=64, slices=10) for s in range(2)]
    refs = select_slices(cases, DataConfig())
    pos = [r for r in refs if r.calcified]
    pre = PreprocessConfig(input_size=64, normalisation="window", window_hu=(-300.0, 1200.0))
    ds = SegmentationSliceDataset(cases, pos, [], pre, train=False, ignore_below_hu=130.0)
    for i, r in enumerate(pos):
        _, y = ds[i]
        hu, lab = cases[r.case].hu[r.z], cases[r.case].labels[r.z]
        expect = np.where(hu >= 130.0, lab.astype(np.int64), IGNORE_INDEX)
        np.testing.assert_array_equal(y.numpy(), expect)
    assert window_input_value(130.0, pre) == pytest.approx((130 + 300) / 1500 * 2 - 1)
    with pytest.raises(ValueError, match="window"):
        window_input_value(130.0, PreprocessConfig())


def test_patch_targets_mark_the_patch_holding_calcium() -> None:
    """Per-patch guidance targets: a 512² slice on a 14x14 grid (patch side 512/14 ≈ 36.6 px); one
    calcium pixel at (100, 300) lies in patch row 100 // 36.6 = 2, column 300 // 36.6 = 8."""
    case = make_case(0, size=512, slices=1)
    case.labels[0] = 0
    case.labels[0, 100, 300] = 2
    refs = select_slices([case], DataConfig())
    ds = ClassifierSliceDataset([case], refs, PreprocessConfig(input_size=224), patch_grid=14)
    x, y, p, cand = ds[0]
    assert x.shape == (1, 224, 224) and p.shape == (196,) and cand.numel() == 0  # candidates not asked for
    assert p.sum() == 1.0 and p.reshape(14, 14)[2, 8] == 1.0
    with pytest.raises(ValueError, match="augment"):
        ClassifierSliceDataset([case], refs, PreprocessConfig(input_size=224), augment=True, patch_grid=14)


def test_candidates_are_the_engines_gate_on_the_native_slice() -> None:
    """candidate_grid: the dataset hands the trainer exactly what the engine's gate computes."""
    from cacstream.engine.inference.candidates import CandidateRule, candidate_patches

    case = make_case(0, size=128, slices=2)
    case.hu[0] = 0
    case.hu[0, 40:44, 90:94] = 400
    refs = select_slices([case], DataConfig())
    ds = ClassifierSliceDataset([case], refs, PreprocessConfig(input_size=64), candidate_grid=4,
                                candidate_rule=CandidateRule())
    for i, ref in enumerate(refs):
        _, _, p, cand = ds[i]
        want = candidate_patches(case.hu[ref.z], case.pixel_spacing_mm, 64, 4, CandidateRule())
        assert p.numel() == 0 and np.array_equal(cand.numpy().reshape(4, 4) > 0, want[0])
    z0 = [i for i, r in enumerate(refs) if r.z == 0]  # 16 px of 0.7² mm² = 7.8 mm²: one candidate
    cand0 = ds[z0[0]][3].reshape(4, 4)
    assert cand0.sum() == 1.0 and cand0[1, 2] == 1.0  # rows 40-43 of 128 -> patch row 1; cols 90-93 -> 2
    with pytest.raises(ValueError, match="candidate_rule"):
        ClassifierSliceDataset([case], refs, PreprocessConfig(input_size=64), candidate_grid=4)


def test_hard_negative_crops_centre_on_non_coronary_calcium_component_by_component() -> None:
    """positive_crop_p 0 and hard_negative_crop_p 1: every patch holds non-coronary calcium, and a
    3-pixel 'aortic' deposit is drawn about as often as a 400-pixel 'vertebra' (component-uniform, not
    pixel-uniform, which would pick it ~1 % of the time). With hard_negative_crop_p 0 many patches hold
    no calcium at all."""
    from cacstream.training.datasets.cases import Case
    from cacstream.training.datasets.slices import SliceRef, window_input_value

    size = 64
    hu = np.full((1, size, size), 40.0, np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    hu[0, 44:64, 12:32] = 700.0  # vertebra: 400 px, never labelled
    hu[0, 5, 5:8] = 400.0  # aortic deposit: 3 px, not coronary
    hu[0, 10:13, 50:53] = 500.0  # coronary calcium, labelled LAD
    labels[0, 10:13, 50:53] = 2
    case = Case("hn", "hn", hu, labels, (0.7, 0.7))
    pre = PreprocessConfig(input_size=size, normalisation="window", window_hu=(-300.0, 1200.0))
    ref = SliceRef(0, 0, True)

    def patches(hard: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ds = SegmentationSliceDataset([case], [ref], [], pre, train_crop=16, positive_crop_p=0.0,
                                      negative_fraction=0.0, hard_negative_crop_p=hard, seed=3)
        out = []
        for e in range(200):
            ds.set_epoch(e)
            out.append(ds[0])
        return out

    bright = float(window_input_value(130.0, pre)) - 1e-6
    hard = patches(1.0)
    non_coronary = [bool(((x[0] >= bright) & (y == 0)).any()) for x, y in hard]
    v400 = float(window_input_value(400.0, pre))  # the deposit's input value (the window is wider)
    aortic = [bool((abs(x[0] - v400) < 1e-4).any()) for x, _ in hard]
    assert all(non_coronary)
    assert 0.3 < float(np.mean(aortic)) < 0.7
    plain = patches(0.0)
    assert np.mean([bool((x[0] >= bright).any()) for x, _ in plain]) < 0.8
    with pytest.raises(ValueError, match="window"):
        SegmentationSliceDataset([case], [ref], [], PreprocessConfig(input_size=size), hard_negative_crop_p=0.5)
