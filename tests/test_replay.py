"""`cacstream replay`: the planned order (interleaved / sequential / shuffled), the rate, and every write kind
(chunked, temp-name + rename, junk, truncated, duplicate) leaving the right bytes behind."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cacstream.engine.series.errors import DicomReadError
from cacstream.engine.series.headers import read_header
from cacstream.engine.stream.replay import ReplayConfig, discover_series, plan, replay

from _stream_series import write_series


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("replay-src")
    write_series(root / "a", 51, n_slices=9, size=32)
    write_series(root / "b", 52, n_slices=9, size=32)
    write_series(root / "c", 53, n_slices=8, size=32)
    (root / "notes.txt").write_text("not an image")
    return root


def test_discover_groups_by_series(src: Path) -> None:
    series = discover_series(src)
    assert sorted(len(s) for s in series) == [8, 9, 9]
    for files in series:
        assert len({read_header(p)[0].series_instance_uid for p in files}) == 1


def test_interleaved_sequential_and_shuffled_orders(src: Path, tmp_path: Path) -> None:
    series = discover_series(src)
    inter = plan(series, tmp_path, ReplayConfig(interleave=True))
    assert [w.series for w in inter[:6]] == [0, 1, 2, 0, 1, 2]
    seq = plan(series, tmp_path, ReplayConfig(interleave=False))
    assert [w.series for w in seq] == sorted(w.series for w in seq)
    shuf = plan(series, tmp_path, ReplayConfig(shuffle=True, seed=1))
    assert [w.src for w in shuf if w.series == 0] != series[0]
    assert sorted(w.src for w in shuf if w.series == 0) == sorted(series[0])
    assert plan(series, tmp_path, ReplayConfig(shuffle=True, seed=1)) == shuf  # reproducible


def test_every_write_kind_lands_as_intended(src: Path, tmp_path: Path) -> None:
    series = discover_series(src)
    cfg = ReplayConfig(rate=400.0, chunked_fraction=0.3, rename_fraction=0.3, chunk_pause_s=0.05, junk=2,
                       truncated=2, duplicates=2, seed=4, layout="series")
    res = replay(series, tmp_path / "export", cfg)
    kinds = [w.kind for w in res.writes]
    assert kinds.count("junk") == 2 and kinds.count("truncated") == 2 and kinds.count("duplicate") == 2
    assert {"plain", "chunked", "rename"} <= set(kinds)
    for w in res.writes:
        assert w.dest.is_file() and w.dest.parent.parent == tmp_path / "export" or w.kind == "junk"
        if w.kind in ("plain", "chunked", "rename", "duplicate"):
            assert w.dest.read_bytes() == w.src.read_bytes()
        elif w.kind == "truncated":
            assert 0 < w.dest.stat().st_size < w.src.stat().st_size
            with pytest.raises(DicomReadError):
                read_header(w.dest)
        else:
            with pytest.raises(DicomReadError):
                read_header(w.dest)
    assert not list((tmp_path / "export").rglob(".*.part"))  # every temp name was renamed
    assert [len(f) for f in res.series_files] == [len(s) for s in series]


def test_the_rate_is_respected_and_chunked_files_are_seen_half_written(src: Path, tmp_path: Path) -> None:
    series = discover_series(src)[:1]
    n = len(series[0])
    seen_partial = []
    export = tmp_path / "export"

    def spy() -> None:
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            for p in export.glob("*.dcm") if export.exists() else []:
                try:
                    read_header(p)
                except DicomReadError as err:
                    seen_partial.append(err.reason)
            time.sleep(0.01)

    t = threading.Thread(target=spy)
    t.start()
    t0 = time.monotonic()
    replay(series, export, ReplayConfig(rate=20.0, chunked_fraction=1.0, chunk_pause_s=0.15))
    elapsed = time.monotonic() - t0
    t.join()
    assert (n - 1) / 20.0 <= elapsed < (n - 1) / 20.0 + 2.0
    assert "truncated" in seen_partial  # a reader polling the folder does meet half-written files


def test_cli_replays_into_a_folder(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    res = subprocess.run([sys.executable, "-m", "cacstream", "replay", str(src), str(out), "--rate", "500",
                          "--junk", "1", "--shuffle"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(list(out.iterdir())) == 26 + 1
    bad = subprocess.run([sys.executable, "-m", "cacstream", "replay", str(src), str(out), "--rate", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "rate must be > 0" in bad.stderr
