"""Score a folder at once (`cacstream score`): scan, reject/skip with reasons, score slice by slice, report.

The slices go through the same concurrent per-slice stages as `cacstream watch` (``runner``), and a
series is summed by the same ``finalize_series`` as soon as its last slice is scored, so `score` and
`watch` give identical scores on the same files.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cacstream.engine.config import ScoreConfig
from cacstream.engine.pipeline.outputs import OutputConfig, write_outputs
from cacstream.engine.pipeline.runner import PipelineConfig
from cacstream.engine.report.json_report import rejected_report, write_json_atomic

log = logging.getLogger("cacstream.score")

EXIT_OK, EXIT_NOTHING, EXIT_SERIES_FAILED, EXIT_NO_WEIGHTS = 0, 3, 4, 5


@dataclass
class RunSummary:
    """What happened to everything under PATH; written to DIR/run-summary.json."""

    path: str
    scored: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "counts": {
                "scored": len(self.scored),
                "rejected": len(self.rejected),
                "failed": len(self.failed),
                "skipped_files": len(self.skipped_files),
            },
            "scored": self.scored,
            "rejected": self.rejected,
            "failed": self.failed,
            "skipped_files": self.skipped_files,
            "timings_ms": self.timings_ms,
        }


def pipeline_config(config: ScoreConfig, max_batch_wait_ms: float = 50.0, with_masks: bool = True) -> PipelineConfig:
    import os

    threads = config.decode_threads if config.decode_threads > 0 else min(4, os.cpu_count() or 1)
    return PipelineConfig(decode_threads=threads, batch_size=config.batch_size,
                          max_batch_wait_ms=max_batch_wait_ms, with_masks=with_masks)


def score_folder(
    path: Path,
    out_dir: Path,
    config: ScoreConfig,
    *,
    ledger: Path | None = None,
    quiet: bool = False,
    outputs: OutputConfig = OutputConfig(),
    max_batch_wait_ms: float = 50.0,
) -> int:
    """Score every eligible series under ``path``; return the documented exit code."""
    from cacstream.engine.pipeline.finalize import finalize_series
    from cacstream.engine.pipeline.models import ModelsUnavailable, load_models
    from cacstream.engine.pipeline.runner import SlicePipeline
    from cacstream.engine.pipeline.stages import SliceJob, SliceOutcome
    from cacstream.engine.series import scan_path
    from cacstream.engine.series.types import ScanResult, Series

    console = Console(stderr=True, quiet=quiet)
    out_dir = Path(out_dir)
    ledger = Path(ledger) if ledger else out_dir / "ledger.csv"
    summary = RunSummary(path=str(path))

    if not Path(path).exists():
        console.print(f"[red]cacstream score: {path}: no such file or folder[/red]")
        return EXIT_NOTHING

    models = None
    if config.mode == "model":
        try:
            models = load_models(config)
        except ModelsUnavailable as exc:
            console.print(f"[red]cacstream score --mode model: {exc}[/red]")
            return EXIT_NO_WEIGHTS

    t0 = time.perf_counter()
    scan: ScanResult = scan_path(Path(path), config.eligibility, progress=not quiet)
    summary.timings_ms["scan"] = (time.perf_counter() - t0) * 1e3
    out_dir.mkdir(parents=True, exist_ok=True)

    for sk in scan.skipped:
        summary.skipped_files.append({"path": str(sk.path), "reason": sk.reason, "message": sk.message})
    for rj in scan.rejected:
        report = rejected_report(rj.uid, rj.reason, rj.message, n_files=len(rj.files), slices_total=len(rj.files))
        write_outputs(out_dir, report, None, ledger, outputs)
        summary.rejected.append({"series_instance_uid": rj.uid, "reason": rj.reason, "message": rj.message})

    by_uid: dict[str, Series] = {s.uid: s for s in scan.series}
    outcomes: dict[str, dict[tuple[str, int], SliceOutcome]] = {uid: {} for uid in by_uid}
    started: dict[str, float] = {}
    ready: queue.Queue[str] = queue.Queue()
    lock = threading.Lock()
    done = [0]

    def on_outcome(o: SliceOutcome) -> None:
        with lock:
            done[0] += 1
            got = outcomes[o.job.series_uid]
            got[o.key] = o
            if len(got) == len(by_uid[o.job.series_uid].slices):
                ready.put(o.job.series_uid)

    model_info = models.info if models is not None else None
    pipe = SlicePipeline(config.agatston, on_outcome, models=models,
                         config=pipeline_config(config, max_batch_wait_ms, outputs.seg or outputs.key_image)).start()

    def feed() -> None:
        for s in scan.series:
            started[s.uid] = time.perf_counter()
            for h in s.slices:
                pipe.submit(SliceJob(s.uid, h))

    feeder = threading.Thread(target=feed, name="cac-score-feed", daemon=True)
    feeder.start()
    rows: list[tuple[str, ...]] = []
    total_slices = sum(len(s.slices) for s in scan.series)
    progress = _progress(console, quiet, total_slices)
    try:
        for _ in range(len(scan.series)):
            while True:
                try:
                    uid = ready.get(timeout=0.2)
                    break
                except queue.Empty:
                    _advance(progress, done)
            _advance(progress, done)
            series = by_uid[uid]
            with lock:
                got = outcomes.pop(uid)
            try:
                t_final = time.perf_counter()
                score = finalize_series(series, got, mode=config.mode, agatston=config.agatston, model=model_info,
                                        skeletal_gate=models.gate_decider if models is not None else None)
                from cacstream.engine.report.json_report import scored_report

                report = scored_report(score.scored)
                write_outputs(out_dir, report, score, ledger, outputs)
                score.scored.timings_ms["report"] = (time.perf_counter() - t_final) * 1e3
            except Exception as exc:  # one bad series must not stop the others
                reason, message = _failure(exc)
                log.error("series %s failed: %s", uid, message)
                (out_dir / "errors").mkdir(exist_ok=True)
                (out_dir / "errors" / f"{uid}.txt").write_text(
                    message + "\n" + "".join(traceback.format_exception(exc)))
                report = rejected_report(uid, reason, message, n_files=len({h.path for h in series.slices}),
                                         slices_total=len(series.slices), model=model_info)
                write_outputs(out_dir, report, None, ledger, outputs)
                summary.failed.append({"series_instance_uid": uid, "reason": reason, "message": message})
                rows.append((uid, str(len(series.slices)), "[red]failed[/red]", reason, "", "", ""))
                continue
            summary.scored.append({"series_instance_uid": uid, "agatston_total": report["agatston_total"],
                                   "risk_category": report["risk_category"]})
            rows.append(scored_row(uid, report))
    finally:
        feeder.join()
        pipe.close()
        if progress is not None:
            progress.stop()

    summary.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
    write_json_atomic(out_dir / "run-summary.json", summary.to_json())
    _print_tables(console, rows, summary)

    if summary.failed:
        return EXIT_SERIES_FAILED
    if not summary.scored:
        console.print(f"[yellow]nothing to score under {path}: {len(summary.rejected)} series rejected, "
                      f"{len(summary.skipped_files)} files skipped (see {out_dir / 'run-summary.json'})[/yellow]")
        return EXIT_NOTHING
    return EXIT_OK


def _failure(exc: BaseException) -> tuple[str, str]:
    from cacstream.engine.pipeline.finalize import SeriesFailed

    if isinstance(exc, SeriesFailed):
        return exc.reason, exc.message
    return "internal_error", f"{type(exc).__name__}: {exc} (traceback in errors/)"


def _progress(console: Console, quiet: bool, total: int) -> Any:
    if quiet or total == 0:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(TextColumn("scoring slices"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                 console=console, transient=True)
    p.start()
    p.add_task("slices", total=total)
    return p


def _advance(progress: Any, done: list[int]) -> None:
    if progress is not None:
        progress.update(progress.tasks[0].id, completed=done[0])


def scored_row(uid: str, report: dict[str, Any]) -> tuple[str, ...]:
    """One line of the terminal's "series scored" table: the scores, and what the model-mode rules left
    out of them by reason (the key image's words), so an operator sees at a glance when they acted."""
    from collections import Counter

    from cacstream.engine.report.key_image import EXCLUSION_WORDS

    per = report["agatston_per_artery"]
    left_out = Counter(x["reason"] for x in report.get("excluded_lesions") or [])
    words = ", ".join(f"{n} {EXCLUSION_WORDS.get(why, why).split(' (')[0]}" for why, n in sorted(left_out.items()))
    return (uid, str(report["slices_total"]), "scored", f"{report['agatston_total']:.1f}", report["risk_category"],
            " ".join(f"{a} {v:.1f}" for a, v in per.items()), words)


def _print_tables(console: Console, rows: list[tuple[str, ...]], summary: RunSummary) -> None:
    if rows:
        t = Table(title="series scored")
        for col in ("SeriesInstanceUID", "slices", "status", "Agatston", "risk", "per artery",
                    "lesions not counted"):
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(*r)
        console.print(t)
    if summary.rejected:
        t = Table(title="series rejected")
        t.add_column("SeriesInstanceUID", overflow="fold")
        t.add_column("reason")
        t.add_column("why", overflow="fold")
        for r in summary.rejected:
            t.add_row(r["series_instance_uid"], r["reason"], r["message"])
        console.print(t)
    if summary.skipped_files:
        t = Table(title=f"files skipped ({len(summary.skipped_files)})")
        t.add_column("file", overflow="fold")
        t.add_column("reason")
        t.add_column("why", overflow="fold")
        for s in summary.skipped_files[:50]:
            t.add_row(s["path"], s["reason"], s["message"])
        if len(summary.skipped_files) > 50:
            t.add_row("…", "", f"{len(summary.skipped_files) - 50} more in run-summary.json")
        console.print(t)
