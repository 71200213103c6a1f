"""Acceptance of the streaming engine (issue 5): a replayed, messy export folder → every eligible series
scored exactly once with the same score as `cacstream score` on the same files, every file accounted for
in the state database; late slices re-open a series; expected slice counts complete it early; logs hold
no patient names or IDs; metrics are served on localhost."""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from cacstream.engine.config import ScoreConfig
from cacstream.engine.pipeline.batch import score_folder
from cacstream.engine.pipeline.outputs import OutputConfig
from cacstream.engine.stream.assembly import CompletionConfig
from cacstream.engine.stream.engine import Published, StreamConfig, StreamEngine
from cacstream.engine.stream.logging import EventLog
from cacstream.engine.stream.replay import ReplayConfig, discover_series, replay
from cacstream.engine.stream.settle import SettleConfig
from cacstream.engine.stream.watcher import walk_files

from _stream_series import write_series

FAST = dict(settle=SettleConfig(settle_s=0.1, give_up_s=1.5), rescan_interval_s=2.0, loop_interval_s=0.02)


def _config(export: Path, out: Path, quiet_s: float = 1.5, **kw) -> StreamConfig:  # noqa: ANN003
    args = dict(FAST)
    args.update(kw)
    return StreamConfig(export_dir=export, out_dir=out, completion=CompletionConfig(quiet_s=quiet_s), **args)


def run_engine(engine: StreamEngine, until, timeout_s: float = 90.0) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    engine.run(lambda e: until(e) or time.monotonic() - t0 > timeout_s)
    assert time.monotonic() - t0 <= timeout_s, "engine did not finish in time"


def _db(out: Path) -> sqlite3.Connection:
    c = sqlite3.connect(out / ".cacstream" / "state.sqlite")
    c.row_factory = sqlite3.Row
    return c


def _ledger(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory: pytest.TempPathFactory, coca_root: Path) -> dict:
    """Replay 7 series (4 phantoms, 2 COCA scans, 1 too short to score) with every kind of mess into a
    watched folder; return what the engine and `cacstream score` made of it."""
    from cacstream.training.phantom import PhantomConfig, make_phantom
    from cacstream.training.phantom import write_series as write_phantom

    root = tmp_path_factory.mktemp("messy")
    src, export, out, out_score = root / "src", root / "export", root / "out", root / "out-score"
    export.mkdir()
    kinds = ["cardiac_gated", "chest", "calibration", "cardiac_gated"]
    for i, kind in enumerate(kinds):
        case = make_phantom(10 + i, PhantomConfig(kind=kind, matrix=96, thickness_mm=3.0, increment_mm=3.0,
                                                  z_coverage_mm=None if kind == "calibration" else 27.0))
        write_phantom(case, src, write_labels=False)
    short_paths, short_uid, _ = write_series(src / "short", 5, n_slices=5)
    series = discover_series(src)
    series.append(sorted((coca_root / "Gated_release_final" / "patient" / "0").rglob("*.dcm")))
    series.append(sorted((coca_root / "deidentified_nongated" / "1").rglob("*.dcm")))
    assert len(series) == 7
    published: list[Published] = []
    engine = StreamEngine(_config(export, out), log=EventLog(export, file=out / "watch.jsonl"),
                          on_published=published.append)
    rc = ReplayConfig(rate=250.0, shuffle=True, interleave=True, chunked_fraction=0.2, rename_fraction=0.2,
                      chunk_pause_s=0.15, junk=2, truncated=2, duplicates=1, seed=5)
    writer = threading.Thread(target=lambda: results.append(replay(series, export, rc)))
    results: list = []
    engine.start()
    writer.start()
    run_engine(engine, lambda e: not writer.is_alive() and len(published) >= 7 and e.idle(0.5), timeout_s=120)
    writer.join()
    rc_score = score_folder(export, out_score, ScoreConfig(mode="threshold"), quiet=True)
    return {"export": export, "out": out, "out_score": out_score, "published": published, "replay": results[0],
            "series": series, "short_uid": short_uid, "score_rc": rc_score, "engine": engine}


def test_every_eligible_series_is_scored_exactly_once_like_cacstream_score(messy_run: dict) -> None:
    out, out_score = messy_run["out"], messy_run["out_score"]
    assert messy_run["score_rc"] == 0
    summary = json.loads((out_score / "run-summary.json").read_text())
    uids_score = {r["series_instance_uid"] for r in summary["scored"]}
    assert len(uids_score) == 6
    db = _db(out)
    reports = db.execute("SELECT uid, version, status, outcome FROM reports").fetchall()
    assert len(reports) == 7 and all(r["version"] == 1 and r["status"] == "published" for r in reports)
    assert {r["uid"] for r in reports if r["outcome"] == "scored"} == uids_score
    ledger = _ledger(out / "ledger.csv")
    assert sorted(r["series_instance_uid"] for r in ledger) == sorted(r["uid"] for r in reports)  # once each
    with_sr = 0
    for uid in uids_score:
        watch = json.loads((out / f"{uid}.json").read_text())
        ref = json.loads((out_score / f"{uid}.json").read_text())
        assert watch["status"] == "scored" and watch["report_version"] == 1
        assert watch["agatston_total"] == ref["agatston_total"]
        assert watch["agatston_per_artery"] == ref["agatston_per_artery"]
        assert watch["volume_mm3_total"] == ref["volume_mm3_total"]
        assert watch["lesions"] == ref["lesions"]
        assert watch["slices_total"] == ref["slices_total"]
        assert (out / watch["artifacts"]["key_image"]).is_file()
        if "sr" in watch["artifacts"]:
            with_sr += 1
            assert (out / watch["artifacts"]["sr"]).is_file()
        else:  # COCA's de-identified non-gated files have no StudyInstanceUID: no SR, and the report says so
            assert any(w.startswith("DICOM SR not written: the source images have no StudyInstanceUID")
                       for w in watch["warnings"])
            assert watch == {**ref, "created_utc": watch["created_utc"], "timings_ms": watch["timings_ms"]}
    assert with_sr == 5
    short = json.loads((out / f"{messy_run['short_uid']}.json").read_text())
    assert short["status"] == "rejected" and short["reason"] == "too_few_slices"


def test_every_file_is_accounted_for_in_the_state_database(messy_run: dict) -> None:
    export, out = messy_run["export"], messy_run["out"]
    db = _db(out)
    rows = {r["path"]: r for r in db.execute("SELECT * FROM files").fetchall()}
    on_disk = {str(p) for p in walk_files(export)}
    assert on_disk <= set(rows), f"files never recorded: {sorted(on_disk - set(rows))[:5]}"
    assert not [p for p, r in rows.items() if r["status"] in ("pending", "accepted")]
    by_name = {Path(p).name: r for p, r in rows.items()}
    for i in range(2):
        assert by_name[f"junk-{i:03d}.dcm"]["status"] == "quarantined"
        assert by_name[f"junk-{i:03d}.dcm"]["reason"] == "not_dicom"
    trunc = [r for n, r in by_name.items() if "trunc-" in n]
    assert len(trunc) == 2 and all(r["status"] == "quarantined" and r["reason"] == "truncated" for r in trunc)
    dup = [r for n, r in by_name.items() if "dup-" in n]
    assert len(dup) == 1 and dup[0]["status"] == "skipped" and dup[0]["reason"] == "duplicate_sop_instance"
    renamed = [w for w in messy_run["replay"].writes if w.kind == "rename"]
    assert renamed
    temp_rows = [r for p, r in rows.items() if Path(p).name.endswith(".part")]
    assert all(r["status"] == "vanished" for r in temp_rows)
    real = [w.dest for w in messy_run["replay"].writes if w.kind in ("plain", "chunked", "rename")]
    for p in real:
        r = rows[str(p)]
        assert r["status"] in ("scored", "rejected"), (p, r["status"])
        assert r["report_version"] == 1
    short = [r for r in rows.values() if r["series_uid"] == messy_run["short_uid"] and r["status"] != "skipped"]
    assert len(short) == 5 and all(r["status"] == "rejected" and r["reason"] == "too_few_slices" for r in short)


def test_the_export_folder_is_only_read(messy_run: dict) -> None:
    export = messy_run["export"]
    written = {w.dest for w in messy_run["replay"].writes}
    assert {p for p in walk_files(export)} == written


def test_logs_hold_no_patient_names_or_ids(messy_run: dict) -> None:
    text = (messy_run["out"] / "watch.jsonl").read_text()
    assert "series_reported" in text and "file_quarantined" in text
    for line in text.splitlines():
        json.loads(line)  # one JSON object per line
    for phi in ("Doe^Jane", "PID-0005", "PHANTOM0000", "coca", "Gated_release", str(messy_run["export"])):
        assert phi not in text
    for uid in [messy_run["short_uid"]]:
        assert uid not in text  # series are named by hash, not UID


def test_report_events_break_the_finalisation_time_down(messy_run: dict) -> None:
    """An operator chasing latency sees where the time after completion went (sum, artifacts, staging,
    publishing), and the parts add up to no more than the whole latency."""
    events = [json.loads(line) for line in (messy_run["out"] / "watch.jsonl").read_text().splitlines()]
    reported = [e for e in events if e.get("event") == "series_reported"]
    assert reported
    for e in reported:
        parts = e["finalize_ms"]
        assert set(parts) == {"sum", "artifacts", "stage", "publish"}
        assert all(v >= 0 for v in parts.values())
        assert sum(parts.values()) <= e["last_slice_to_report_s"] * 1e3 + 1.0


def test_late_slice_reopens_and_versions_the_report(tmp_path: Path) -> None:
    src, export, out = tmp_path / "src", tmp_path / "export", tmp_path / "out"
    export.mkdir()
    paths, uid, _ = write_series(src, 21, n_slices=10)
    for p in paths[:-1]:  # all but the top slice: a complete-looking series, scored
        (export / p.name).write_bytes(p.read_bytes())
    published: list[Published] = []
    engine = StreamEngine(_config(export, out, quiet_s=0.8), on_published=published.append)
    run_engine(engine, lambda e: len(published) >= 1 and e.idle(0.2))
    v1 = json.loads((out / f"{uid}.json").read_text())
    assert v1["report_version"] == 1 and v1["slices_total"] == 9
    (export / paths[-1].name).write_bytes(paths[-1].read_bytes())  # the late slice
    engine2 = StreamEngine(_config(export, out, quiet_s=0.8), on_published=published.append)
    run_engine(engine2, lambda e: len(published) >= 2 and e.idle(0.2))
    v2 = json.loads((out / f"{uid}.json").read_text())
    assert v2["report_version"] == 2 and v2["slices_total"] == 10
    archived = json.loads((out / "archive" / uid / "v1" / f"{uid}.json").read_text())
    assert archived == v1
    ref = score_folder(export, tmp_path / "ref", ScoreConfig(mode="threshold"), quiet=True)
    assert ref == 0
    assert v2["agatston_total"] == json.loads((tmp_path / "ref" / f"{uid}.json").read_text())["agatston_total"]
    assert [r["report_version"] for r in _ledger(out / "ledger.csv")] == ["1", "2"]
    db = _db(out)
    assert [tuple(r) for r in db.execute("SELECT version, status FROM reports ORDER BY version")] == [
        (1, "published"), (2, "published")]
    assert {r["report_version"] for r in db.execute("SELECT report_version FROM files")} == {2}


def test_expected_slice_count_completes_before_the_quiet_period(tmp_path: Path) -> None:
    src, export, out = tmp_path / "src", tmp_path / "export", tmp_path / "out"
    export.mkdir()
    paths, uid, _ = write_series(src, 22, n_slices=9, expected_count=True)
    published: list[Published] = []
    engine = StreamEngine(_config(export, out, quiet_s=60.0), on_published=published.append)
    t0 = time.monotonic()
    engine.start()
    for p in paths:
        (export / p.name).write_bytes(p.read_bytes())
    run_engine(engine, lambda e: len(published) >= 1, timeout_s=30)
    assert time.monotonic() - t0 < 20  # far less than the 60 s quiet period
    assert published[0].uid == uid and published[0].slices == 9


def test_metrics_endpoint_and_polling_observer(tmp_path: Path) -> None:
    from cacstream.engine.stream.metrics import MetricsServer

    src, export, out = tmp_path / "src", tmp_path / "export", tmp_path / "out"
    export.mkdir()
    paths, uid, _ = write_series(src, 23, n_slices=8)
    published: list[Published] = []
    engine = StreamEngine(_config(export, out, quiet_s=0.6, polling=True, poll_interval_s=0.2,
                                  outputs=OutputConfig(sr=False, seg=False, key_image=False)),
                          on_published=published.append)
    engine.start()
    server = MetricsServer(0, engine.metrics_samples).start()
    try:
        for p in paths:
            (export / p.name).write_bytes(p.read_bytes())
        bodies: list[str] = []

        def scrape_when_done(e: StreamEngine) -> bool:
            if len(published) >= 1 and e.idle(0.1):  # scraped while the engine still runs
                bodies.append(urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read()
                              .decode())
                return True
            return False

        run_engine(engine, scrape_when_done, timeout_s=30)
        body = bodies[0]
    finally:
        server.stop()
    assert "# TYPE cacstream_slices_scored_total counter" in body
    assert "cacstream_slices_scored_total 8" in body
    assert 'cacstream_series_reported_total{outcome="scored"} 1' in body
    report = json.loads((out / f"{uid}.json").read_text())
    assert set(report["artifacts"]) == {"json"}  # SR / SEG / key image switched off


def test_quarantine_and_move_done_folders(tmp_path: Path) -> None:
    src, export, out = tmp_path / "src", tmp_path / "export", tmp_path / "out"
    done, quarantine = tmp_path / "done", tmp_path / "quarantine"
    export.mkdir()
    paths, uid, _ = write_series(src, 24, n_slices=8)
    for p in paths:
        (export / p.name).write_bytes(p.read_bytes())
    (export / "garbage.dcm").write_bytes(b"not a dicom file at all" * 10)
    published: list[Published] = []
    engine = StreamEngine(_config(export, out, quiet_s=0.6, move_done=done, quarantine=quarantine),
                          on_published=published.append)
    run_engine(engine, lambda e: len(published) >= 1 and e.idle(0.2), timeout_s=30)
    assert list(walk_files(export)) == []
    assert (quarantine / "garbage.dcm").is_file()
    assert sorted(p.name for p in (done / uid).iterdir()) == sorted(p.name for p in paths)
    rows = _db(out).execute("SELECT status, moved_to FROM files").fetchall()
    assert all(r["moved_to"] for r in rows)


def test_output_folder_inside_the_export_folder_is_refused(tmp_path: Path) -> None:
    from cacstream.engine.stream.engine import ConfigError

    with pytest.raises(ConfigError, match="inside the watched folder"):
        StreamEngine(_config(tmp_path, tmp_path / "out"))


def test_model_mode_watch_equals_score_with_real_tiny_weights(tmp_path: Path,
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """Model mode end to end with a real (tiny) weights folder: the stream batches slices of two series
    together, and its reports equal `cacstream score --mode model` on the same files, slice decisions and
    per-artery scores included."""
    from _tiny_weights import tiny_weights_dir

    from cacstream.engine.pipeline.models import load_models
    from cacstream.training.phantom import PhantomConfig, make_phantom
    from cacstream.training.phantom import write_series as write_phantom

    weights = tiny_weights_dir(tmp_path_factory)
    src, export, out, ref = tmp_path / "src", tmp_path / "export", tmp_path / "out", tmp_path / "ref"
    export.mkdir()
    for seed in (9301, 9302):
        write_phantom(make_phantom(seed, PhantomConfig(kind="cardiac_gated", matrix=64, z_coverage_mm=30.0,
                                                       thickness_mm=3.0, calcium_category="101-400")),
                      src, write_labels=False)
    cfg = ScoreConfig(mode="model", weights_dir=str(weights), backend="torch", batch_size=8)
    models = load_models(cfg)
    published: list[Published] = []
    engine = StreamEngine(_config(export, out, quiet_s=1.0, score=cfg), models=models, on_published=published.append)
    writer = threading.Thread(target=replay, args=(discover_series(src), export, ReplayConfig(rate=200, shuffle=True)))
    engine.start()
    writer.start()
    run_engine(engine, lambda e: not writer.is_alive() and len(published) >= 2 and e.idle(0.2), timeout_s=120)
    assert score_folder(export, ref, cfg, quiet=True) == 0
    for p in published:
        got = json.loads((out / f"{p.uid}.json").read_text())
        want = json.loads((ref / f"{p.uid}.json").read_text())
        assert got["mode"] == "model" and got["model"]["weights_id"] == "tiny-test"
        assert got["slices_flagged"] == want["slices_flagged"]
        assert got["agatston_per_artery"] == want["agatston_per_artery"]
        assert got["lesions"] == want["lesions"]
        assert {"filter", "decode", "agatston"} <= set(got["timings_ms"])
