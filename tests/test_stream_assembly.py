"""Series assembly: the completion rule (quiet period, expected count, pending files), duplicates, generations."""

from __future__ import annotations

from pathlib import Path

from cacstream.engine.pipeline.stages import SliceJob, SliceOutcome
from cacstream.engine.series import read_header
from cacstream.engine.stream.assembly import Assembly, CompletionConfig

from _stream_series import write_series


def _headers(tmp_path: Path, n: int = 8, **kw):  # noqa: ANN003, ANN202
    paths, uid, _ = write_series(tmp_path, 81, n_slices=n, size=32, **kw)
    return uid, [(p, read_header(p)) for p in paths]


def _done(a: Assembly, s, hs) -> None:  # noqa: ANN001
    for h in hs:
        a.record(SliceOutcome(job=SliceJob(s.uid, h, s.generation)))


def test_quiet_period_and_all_slices_scored(tmp_path: Path) -> None:
    uid, files = _headers(tmp_path)
    a = Assembly(CompletionConfig(quiet_s=2.0, use_expected_count=True))
    s = a.open(uid, 0, now=0.0)
    for k, (p, hs) in enumerate(files):
        assert a.add(s, p, hs, landed=float(k) * 0.1, expected=None) == hs
    assert a.ready(2.0, lambda u: False) == []  # nothing scored yet
    _done(a, s, [h for _, hs in files for h in hs])
    assert a.ready(2.0, lambda u: False) == []  # last slice landed at 0.7: quiet until 2.7
    assert a.ready(3.0, lambda u: True) == []  # a pending file may still belong to it
    assert a.ready(3.0, lambda u: False) == [s] and s.finalizing
    assert a.ready(4.0, lambda u: False) == []  # handed out once


def test_expected_count_completes_at_once(tmp_path: Path) -> None:
    uid, files = _headers(tmp_path)
    a = Assembly(CompletionConfig(quiet_s=100.0))
    s = a.open(uid, 0, now=0.0)
    for p, hs in files[:-1]:
        a.add(s, p, hs, landed=0.0, expected=8)
        _done(a, s, hs)
    assert a.ready(1.0, lambda u: True) == []
    p, hs = files[-1]
    a.add(s, p, hs, landed=1.0, expected=8)
    _done(a, s, hs)
    assert a.ready(1.0, lambda u: True) == [s]


def test_duplicates_stale_generations_and_never_scored_series(tmp_path: Path) -> None:
    uid, files = _headers(tmp_path)
    a = Assembly()
    s = a.open(uid, 0, now=0.0)
    p0, h0 = files[0]
    a.add(s, p0, h0, 0.0, None)
    assert a.duplicate_of(uid, h0[0].sop_instance_uid, tmp_path / "copy.dcm") == p0
    assert a.duplicate_of(uid, h0[0].sop_instance_uid, p0) is None
    assert a.record(SliceOutcome(job=SliceJob(uid, h0[0], s.generation + 1))) is None  # stale: dropped
    assert not s.outcomes
    uid2, files2 = _headers(tmp_path / "mr", modality="MR")
    s2 = a.open(uid2, 0, now=0.0)
    assert a.add(s2, files2[0][0], files2[0][1], 0.0, None) == []  # never decoded
    assert s2.skip_decode == "not_ct"
    assert a.ready(100.0, lambda u: False) == [s2]  # completes (and is rejected) without decoding
