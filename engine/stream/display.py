"""The live view of a watching engine: one rich table of series (open and recently reported) + a status line.

Shows SeriesInstanceUID tails and series descriptions, never patient names or IDs (the screen of a
scanner workstation is seen by many). ``truth`` adds a column for demos (phantom truth by UID).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from rich.console import Group
from rich.table import Table
from rich.text import Text

from cacstream.engine.stream.engine import StreamEngine


def _uid_tail(uid: str, n: int = 22) -> str:
    return uid if len(uid) <= n else "…" + uid[-(n - 1):]


def series_table(engine: StreamEngine, truth: Mapping[str, str] | None = None, max_rows: int = 30) -> Table:
    t = Table(title="cacstream watch", expand=False)
    t.add_column("series (UID tail)")
    t.add_column("description", overflow="fold", max_width=26)
    t.add_column("slices", justify="right")
    t.add_column("state")
    t.add_column("Agatston", justify="right")
    t.add_column("risk")
    t.add_column("ver", justify="right")
    if truth is not None:
        t.add_column("truth", justify="right")
    now = time.monotonic()
    rows = 0
    for s in engine.assembly.snapshot():
        first = next(iter(s.headers.values()), None)
        desc = first.series_description if first else ""
        exp = f"/{s.expected}" if s.expected else ""
        if s.finalizing:
            state = "[cyan]reporting[/cyan]"
        elif s.skip_decode:
            state = f"[yellow]receiving ({s.skip_decode})[/yellow]"
        else:
            quiet_left = max(0.0, engine.config.completion.quiet_s - (now - s.last_arrival))
            state = f"receiving, scored {s.scored_slices}" + (f", quiet in {quiet_left:.1f}s" if s.all_scored() else "")
        row = [_uid_tail(s.uid), desc, f"{s.n_slices}{exp}", state, "", "", str(s.base_version + 1)]
        if truth is not None:
            row.append(truth.get(s.uid, ""))
        t.add_row(*row)
        rows += 1
    for uid, p in reversed(engine.recent.items()):
        if rows >= max_rows:
            break
        if uid in engine.assembly.series:
            continue
        desc = ""
        if p.report.get("status") == "scored":
            state = "[green]scored[/green]"
            score, risk = f"{p.agatston_total:.1f}", str(p.risk_category)
        else:
            state = f"[red]rejected: {p.reason}[/red]"
            score, risk = "", ""
        row = [_uid_tail(uid), desc, str(p.slices), state, score, risk, str(p.version)]
        if truth is not None:
            row.append(truth.get(uid, ""))
        t.add_row(*row)
        rows += 1
    return t


def status_line(engine: StreamEngine) -> Text:
    c = engine.db.counts()
    depths = engine.pipeline.depths()
    parts = [
        f"files: {sum(c.values())} seen",
        *(f"{k} {v}" for k, v in sorted(c.items())),
        f"| pending {len(engine.tracker.pending)}",
        f"| open series {len(engine.assembly.series)}",
        f"| reports {int(engine.counters['reports_scored'])} scored, {int(engine.counters['reports_rejected'])} rejected",
        f"| queues {' '.join(f'{k}:{v}' for k, v in depths.items())}",
    ]
    return Text(" ".join(parts), style="dim")


def live_view(engine: StreamEngine, truth: Mapping[str, str] | None = None) -> Group:
    return Group(series_table(engine, truth), status_line(engine))
