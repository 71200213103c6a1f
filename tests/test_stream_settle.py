"""The settle rule: a file is accepted only when stable AND complete to the end of its pixel data; a
half-written file waits; junk is given up only after being stable for give_up_s; renamed temp files vanish."""

from __future__ import annotations

from pathlib import Path

from cacstream.engine.stream.settle import Accepted, GaveUp, SettleConfig, SettleTracker, Vanished

from _stream_series import write_series


def test_half_written_file_waits_then_is_accepted_when_complete(tmp_path: Path) -> None:
    paths, uid, _ = write_series(tmp_path / "src", 71, n_slices=8, size=32)
    data = paths[0].read_bytes()
    dest = tmp_path / "a.dcm"
    dest.write_bytes(data[: len(data) // 2])
    t = SettleTracker(SettleConfig(settle_s=0.5, give_up_s=10.0))
    assert t.observe(dest, now=0.0)
    assert t.poll(0.2) == []  # not stable long enough
    assert t.poll(1.0) == []  # stable, parsed: truncated -> keep waiting (a writer may pause)
    assert t.blocks(uid, now=1.0, quiet_s=5.0)  # its header names the series: completion must wait
    with open(dest, "ab") as f:
        f.write(data[len(data) // 2:])
    assert t.poll(1.1) == []  # changed: the clock restarts
    out = t.poll(1.7)
    assert len(out) == 1 and isinstance(out[0], Accepted)
    assert out[0].headers[0].series_instance_uid == uid and out[0].landed == 1.1
    assert not t.pending


def test_junk_is_given_up_only_after_give_up_s_and_temp_names_vanish(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x01\x02" * 300)
    temp = tmp_path / ".x.dcm.part"
    temp.write_bytes(b"partial")
    t = SettleTracker(SettleConfig(settle_s=0.1, give_up_s=2.0))
    t.observe(junk, 0.0)
    t.observe(temp, 0.0)
    assert t.poll(1.0) == []
    assert t.blocks("any", now=1.0, quiet_s=5.0)  # unknown series, changed recently
    assert not t.blocks("any", now=6.0, quiet_s=5.0)
    temp.rename(tmp_path / "x.dcm")
    out = t.poll(2.5)
    kinds = {type(v).__name__: v for v in out}
    assert isinstance(kinds["GaveUp"], GaveUp) and kinds["GaveUp"].reason == "not_dicom"
    assert kinds["GaveUp"].status == "quarantined"
    assert isinstance(kinds["Vanished"], Vanished) and kinds["Vanished"].path == temp


def test_a_temp_name_that_stays_is_skipped_with_its_reason(tmp_path: Path) -> None:
    temp = tmp_path / "slice.dcm.part"
    temp.write_bytes(b"x" * 100)
    t = SettleTracker(SettleConfig(settle_s=0.1, give_up_s=1.0))
    t.observe(temp, 0.0)
    assert t.poll(0.5) == []
    out = t.poll(1.5)
    assert len(out) == 1 and out[0].reason == "temporary" and out[0].status == "skipped"
