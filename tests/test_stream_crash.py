"""SIGKILL a real `cacstream watch` process at many moments, restart it, and check that nothing is lost and
nothing is reported twice (issue 5 acceptance).

Crash moments: chosen by the test from outside (while files are landing, mid-series) and exact ones
inside the engine through the test hook $CACSTREAM_TEST_CRASH_AT (the process SIGKILLs itself right
after: files were accepted; the artifacts were staged (before the database knew); the report row was staged
and the SR moved in place (a half-done publication); the JSON report was published and the ledger
written but before the database knew).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cacstream.engine.config import ScoreConfig
from cacstream.engine.pipeline.batch import score_folder
from cacstream.engine.stream.replay import ReplayConfig, replay
from cacstream.engine.stream.watcher import walk_files

from _stream_series import write_series

N_SERIES = 4


def _watch_cmd(export: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cacstream", "watch", str(export), "--out", str(out), "--mode", "threshold",
            "--quiet-s", "1.0", "--settle-ms", "100", "--give-up-s", "1.5", "--rescan-interval-s", "1",
            "--exit-when-idle", "1.5", "--no-live", "--no-key-image"]


def _start(export: Path, out: Path, crash_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("CACSTREAM_TEST_CRASH_AT", None)
    if crash_at:
        env["CACSTREAM_TEST_CRASH_AT"] = crash_at
    return subprocess.Popen(_watch_cmd(export, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _db_count(out: Path, sql: str) -> int:
    db = out / ".cacstream" / "state.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return int(c.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return 0


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"watch did not finish in {timeout} s: {proc.stderr.read().decode()[-2000:]}")


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("crash")
    src, export, out = root / "src", root / "export", root / "out"
    export.mkdir()
    series = [write_series(src / f"s{i}", 40 + i, n_slices=10)[0] for i in range(N_SERIES)]
    kills: list[str] = []

    # 1. killed from outside while the files land (mid-series), twice
    writer = threading.Thread(target=replay, args=(series, export, ReplayConfig(
        rate=25.0, shuffle=True, chunked_fraction=0.2, rename_fraction=0.2, chunk_pause_s=0.2, junk=1, truncated=1,
        duplicates=1, seed=3)))
    writer.start()
    for threshold in (12,):
        p = _start(export, out)
        deadline = time.monotonic() + 60
        while _db_count(out, "SELECT COUNT(*) FROM files WHERE status='accepted'") < threshold:
            assert time.monotonic() < deadline, "no file accepted"
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills.append(f"external after {threshold} accepted")
    writer.join()
    # 2. exact crash points inside the engine, one per restart
    for point in ("after_accept", "after_stage", "published_sr", "after_publish"):
        p = _start(export, out, crash_at=point)
        rc = _wait(p, 90)
        if rc == -signal.SIGKILL:
            kills.append(point)
        else:  # nothing left to do at that point (e.g. every series already reported)
            assert rc == 0, p.stderr.read().decode()[-2000:]
        if point == "after_accept":
            assert rc == -signal.SIGKILL  # series were still open: the engine re-accepted their files
    # 3. a last clean run until idle
    p = _start(export, out)
    assert _wait(p, 90) == 0
    ref = root / "ref"
    assert score_folder(export, ref, ScoreConfig(mode="threshold"), quiet=True) == 0
    return {"export": export, "out": out, "ref": ref, "kills": kills, "series": series}


def test_the_process_was_really_killed_at_many_points(crashed_run: dict) -> None:
    kills = crashed_run["kills"]
    assert len(kills) >= 4, kills
    assert "after_accept" in kills and any(k.startswith("external") for k in kills)
    assert {"after_stage", "published_sr", "after_publish"} & set(kills)


def test_nothing_lost_nothing_reported_twice(crashed_run: dict) -> None:
    out, ref = crashed_run["out"], crashed_run["ref"]
    with sqlite3.connect(out / ".cacstream" / "state.sqlite") as c:
        reports = c.execute("SELECT uid, version, status FROM reports").fetchall()
        files = c.execute("SELECT path, status, reason FROM files").fetchall()
    assert len(reports) == N_SERIES
    assert all(v == 1 and st == "published" for _, v, st in reports)
    with open(out / "ledger.csv", newline="") as f:
        ledger = list(csv.DictReader(f))
    assert sorted(r["series_instance_uid"] for r in ledger) == sorted(u for u, _, _ in reports)
    summary = json.loads((ref / "run-summary.json").read_text())
    assert {r["series_instance_uid"] for r in summary["scored"]} == {u for u, _, _ in reports}
    for uid, _, _ in reports:
        got = json.loads((out / f"{uid}.json").read_text())
        want = json.loads((ref / f"{uid}.json").read_text())
        assert got["report_version"] == 1
        assert got["agatston_total"] == want["agatston_total"]
        assert got["lesions"] == want["lesions"]
        assert (out / f"{uid}.sr.dcm").is_file() and (out / f"{uid}.seg.dcm").is_file()
    assert not (out / ".staging").exists() or not any((out / ".staging").iterdir())
    recorded = {p: st for p, st, _ in files}
    for p in walk_files(crashed_run["export"]):
        assert str(p) in recorded, p
        assert recorded[str(p)] in ("scored", "quarantined", "skipped"), (p, recorded[str(p)])
    assert not [p for p, st in recorded.items() if st in ("pending", "accepted")]
    real = sum(len(s) for s in crashed_run["series"])
    assert sum(1 for st in recorded.values() if st == "scored") == real


def test_sigterm_stops_cleanly_and_the_series_resumes_after_restart(tmp_path: Path) -> None:
    src, export, out = tmp_path / "src", tmp_path / "export", tmp_path / "out"
    export.mkdir()
    paths, uid, _ = write_series(src, 49, n_slices=10)
    for p in paths[:6]:
        (export / p.name).write_bytes(p.read_bytes())
    cmd = _watch_cmd(export, out)
    cmd[cmd.index("--quiet-s") + 1] = "30"  # the series cannot complete before SIGTERM
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _db_count(out, "SELECT COUNT(*) FROM files WHERE status='accepted'") < 6:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()[-2000:]
    assert _db_count(out, "SELECT COUNT(*) FROM reports") == 0  # checkpointed, not reported half
    assert _db_count(out, "SELECT COUNT(*) FROM series WHERE status='open'") == 1
    for p in paths[6:]:
        (export / p.name).write_bytes(p.read_bytes())
    assert _wait(_start(export, out), 90) == 0
    report = json.loads((out / f"{uid}.json").read_text())
    assert report["report_version"] == 1 and report["slices_total"] == 10
