"""`cacstream demo`: phantoms → replayed export folder → live engine → scores next to the truth.

Everything runs in one process: the phantom series are generated into a temporary source folder, a
replay thread writes them slice by slice into a temporary export folder (interleaved, shuffled, some
files in chunks or renamed, one junk file), and the streaming engine watches that folder exactly as
`cacstream watch` does. The truth shown is the reference of the mode that runs: in model mode the
phantom's coronary calcium per artery; in threshold mode (no models: every lesion >= 130 HU of the
slice counts, bone included) the whole-volume Agatston of the phantom image computed independently
with ``score_volume``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cacstream.engine.stream.engine import Published, StreamConfig, StreamEngine
from cacstream.engine.stream.replay import ReplayConfig, replay


@dataclass(frozen=True)
class DemoSeries:
    uid: str
    label: str
    files: list[Path]
    truth_total: float
    truth_risk: str


@dataclass
class DemoResult:
    series: list[DemoSeries]
    published: dict[str, Published] = field(default_factory=dict)
    landed_last: dict[str, float] = field(default_factory=dict)  # uid → time.time() of its last slice
    elapsed_s: float = 0.0
    timed_out: bool = False

    def latency_minus_quiet_s(self, uid: str, quiet_s: float) -> float | None:
        p = self.published.get(uid)
        if p is None or uid not in self.landed_last:
            return None
        return p.published_at - self.landed_last[uid] - quiet_s


def generate_phantoms(src: Path, n: int, mode: str, matrix: int, seed: int = 1,
                      z_coverage_mm: float | None = 36.0) -> list[DemoSeries]:
    """Write ``n`` phantom series under ``src`` (kinds alternate; calibration phantoms in threshold mode)."""
    import json

    from cacstream.engine.scoring.agatston import score_volume
    from cacstream.training.phantom import PhantomConfig, make_phantom, write_series

    kinds = ("calibration", "cardiac_gated") if mode == "threshold" else ("cardiac_gated", "chest")
    out: list[DemoSeries] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        cfg = PhantomConfig(kind=kind, matrix=matrix, z_coverage_mm=None if kind == "calibration" else z_coverage_mm)
        case = make_phantom(seed + i, cfg)
        paths = write_series(case, src, write_labels=False)
        truth = json.loads((paths[0].parent / "truth.json").read_text())
        if mode == "threshold":
            ref = score_volume(case.hu, case.geometry)
            total, risk = ref.agatston_total, ref.risk_category
        else:
            total, risk = float(truth["agatston_total"]), str(truth["risk_category"])
        out.append(DemoSeries(truth["series_instance_uid"], f"{kind} seed {seed + i}", paths, total, risk))
    return out


def run_demo(
    series: list[DemoSeries],
    export_dir: Path,
    config: StreamConfig,
    replay_config: ReplayConfig,
    *,
    models: Any = None,
    timeout_s: float = 600.0,
    on_tick=None,
    log=None,
) -> DemoResult:
    """Replay ``series`` into ``export_dir`` while an engine watches it; returns when every series is reported."""
    result = DemoResult(series=series)
    lock = threading.Lock()
    by_src = {p: s.uid for s in series for p in s.files}

    def on_published(p: Published) -> None:
        with lock:
            result.published[p.uid] = p

    def on_written(w, t: float) -> None:
        uid = by_src.get(w.src) if w.kind in ("plain", "chunked", "rename") else None
        if uid is not None:
            with lock:
                result.landed_last[uid] = max(result.landed_last.get(uid, 0.0), t)

    engine = StreamEngine(config, models=models, log=log, on_published=on_published)
    stop = threading.Event()
    writer = threading.Thread(target=replay, args=([s.files for s in series], export_dir, replay_config),
                              kwargs={"on_written": on_written, "stop": stop}, name="cac-demo-replay", daemon=True)
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    wanted = {s.uid for s in series}

    def done(e: StreamEngine) -> bool:
        if time.monotonic() > deadline:
            result.timed_out = True
            return True
        with lock:
            return wanted.issubset(result.published) and not writer.is_alive() and e.idle(0.0)

    engine.start()
    writer.start()
    try:
        engine.run(done, on_tick=on_tick)
    finally:
        stop.set()
        writer.join()
    result.elapsed_s = time.monotonic() - t0
    return result
