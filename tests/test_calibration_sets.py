"""The calibration-set format (calibration/sets.py): atomic write, manifest, content id, tamper check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cacstream.calibration.sets import CalibrationSetError, SliceRecord, load_set, write_set
from cacstream.kernels.config import PreprocessConfig

PRE = {
    "filter": PreprocessConfig(input_size=8),
    "segmenter": PreprocessConfig(input_size=16, normalisation="window"),
}


def _records(n: int) -> list[SliceRecord]:
    return [
        SliceRecord(
            f"/data/s/{k}.dcm",
            f"1.2.3.{k}",
            "1.2.3",
            k,
            None,
            "flagged",
            {"filter": "flagged"},
            {"hu_max": 100.0 + k},
        )
        for k in range(n)
    ]


def _inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "filter": rng.random((n, 1, 8, 8), dtype=np.float32),
        "segmenter": rng.random((n, 1, 16, 16), dtype=np.float32),
    }


def _write(d: Path, n: int = 5, seed: int = 0, **kw) -> object:
    return write_set(
        d,
        name="t",
        version=2,
        strategy={"name": "random", "axes": []},
        seed=11,
        weights_id="w",
        weights_dir="/w",
        preprocess=PRE,
        filter_threshold=0.4,
        slices=_records(n),
        inputs=_inputs(n, seed),
        population={"slices": 50},
        sources=["/data"],
        command=["x"],
        **kw,
    )


def test_roundtrip(tmp_path: Path) -> None:
    cs = _write(tmp_path / "s")
    again = load_set(tmp_path / "s")
    assert again.set_id == cs.set_id and again.set_id.startswith("t@") and len(again.set_id) == 14
    assert again.seed == 11 and again.manifest["version"] == 2 and again.weights_id == "w"
    assert again.preprocess("segmenter") == PRE["segmenter"]
    assert again.slices == _records(5)
    np.testing.assert_array_equal(again.inputs["segmenter"], _inputs(5)["segmenter"])
    assert not list(tmp_path.glob(".s.tmp-*"))  # no temporary folder left behind


def test_id_names_the_content(tmp_path: Path) -> None:
    a = _write(tmp_path / "a")
    b = _write(tmp_path / "b")
    c = _write(tmp_path / "c", seed=1)
    assert a.set_id == b.set_id  # same slices, same inputs → same id, wherever and whenever written
    assert a.set_id != c.set_id


def test_refuses_to_overwrite_and_to_clobber_foreign_folders(tmp_path: Path) -> None:
    _write(tmp_path / "s")
    with pytest.raises(CalibrationSetError, match="already exists"):
        _write(tmp_path / "s")
    _write(tmp_path / "s", overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep")
    with pytest.raises(CalibrationSetError, match="not a calibration set"):
        _write(tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep"


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    bad = _inputs(5)
    bad["filter"] = bad["filter"][:4]
    with pytest.raises(CalibrationSetError, match=r"filter inputs must be \(5, 1, 8, 8\)"):
        write_set(
            tmp_path / "s",
            name="t",
            version=1,
            strategy={},
            seed=0,
            weights_id="w",
            weights_dir="/w",
            preprocess=PRE,
            filter_threshold=None,
            slices=_records(5),
            inputs=bad,
            population={},
            sources=[],
        )


def test_a_modified_array_is_detected(tmp_path: Path) -> None:
    _write(tmp_path / "s")
    arr = np.load(tmp_path / "s" / "filter_inputs.npy")
    arr[0, 0, 0, 0] += 1
    np.save(tmp_path / "s" / "filter_inputs.npy", arr)
    with pytest.raises(CalibrationSetError, match="does not match the SHA-256"):
        load_set(tmp_path / "s")
    load_set(tmp_path / "s", verify=False)  # an explicit opt-out still loads


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "manifest.json").unlink(), "not a calibration set"),
        (lambda d: (d / "manifest.json").write_text("{"), "not valid JSON"),
        (lambda d: (d / "manifest.json").write_text(json.dumps({"format": "other"})), "format 'other'"),
        (lambda d: (d / "segmenter_inputs.npy").unlink(), "array file missing"),
    ],
)
def test_broken_sets_name_the_file(tmp_path: Path, damage, message: str) -> None:
    _write(tmp_path / "s")
    damage(tmp_path / "s")
    with pytest.raises(CalibrationSetError, match=message):
        load_set(tmp_path / "s")
