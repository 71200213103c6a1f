"""Replay series into an export folder the way scanners and DICOM nodes write them (tests, demos, benchmarks).

Slices are written at ``rate`` slices per second in total, series interleaved (round robin, as when
several series are exported at once) or one after the other, in scan order or shuffled. A fraction of
the files is written in chunks with pauses (a slow transfer: the engine must not read them half
written), a fraction under a temporary hidden name and renamed at the end (how many DICOM nodes store),
and on request junk files, truncated copies and duplicate copies are mixed in.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

WriteKind = Literal["plain", "chunked", "rename", "junk", "truncated", "duplicate"]


@dataclass(frozen=True)
class ReplayConfig:
    """Attributes:
        rate: slices per second over all series (a scanner exports 10-50 / s).
        shuffle: shuffle the slice order within each series.
        interleave: round robin across series (True) or one series after the other.
        chunked_fraction / rename_fraction: share of files written in chunks with pauses / under a
            temporary name then renamed; the rest are written in one go.
        chunks / chunk_pause_s: how a chunked file is written.
        junk / truncated / duplicates: how many junk files (random bytes), truncated copies of real
            slices and full duplicate copies (same image, another name) to mix in.
        layout: "flat" (every file in EXPORT_DIR) or "series" (one sub-folder per series).
        seed: the random choices are reproducible.
    """

    rate: float = 20.0
    shuffle: bool = False
    interleave: bool = True
    chunked_fraction: float = 0.0
    rename_fraction: float = 0.0
    chunks: int = 3
    chunk_pause_s: float = 0.2
    junk: int = 0
    truncated: int = 0
    duplicates: int = 0
    layout: Literal["flat", "series"] = "flat"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0 slices/s, got {self.rate}")
        for name in ("chunked_fraction", "rename_fraction"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {v}")
        if self.chunked_fraction + self.rename_fraction > 1:
            raise ValueError("chunked_fraction + rename_fraction must be <= 1")


@dataclass(frozen=True)
class Write:
    kind: WriteKind
    src: Path | None
    dest: Path
    series: int  # index of the series (-1 for junk)


@dataclass
class ReplayResult:
    writes: list[Write] = field(default_factory=list)
    landed: dict[Path, float] = field(default_factory=dict)  # dest → time.time() its final bytes were in place
    series_files: list[list[Path]] = field(default_factory=list)  # per series: the real slices written

    def last_landing(self, series: int) -> float:
        return max(self.landed[w.dest] for w in self.writes if w.series == series and w.kind in ("plain", "chunked", "rename"))


def discover_series(src: Path) -> list[list[Path]]:
    """DICOM image files under ``src`` grouped by SeriesInstanceUID (in path order; non-images ignored)."""
    from cacstream.engine.series.errors import DicomReadError
    from cacstream.engine.series.headers import read_header
    from cacstream.engine.series.scan import find_files

    files, _ = find_files(Path(src))
    groups: dict[str, list[Path]] = {}
    for p in files:
        try:
            h = read_header(p)[0]
        except DicomReadError:
            continue
        groups.setdefault(h.series_instance_uid, []).append(p)
    return list(groups.values())


def plan(series: list[list[Path]], export_dir: Path, config: ReplayConfig) -> list[Write]:
    """The ordered list of writes (deterministic for a seed)."""
    rng = random.Random(config.seed)
    export_dir = Path(export_dir)
    queues: list[list[Path]] = []
    for files in series:
        q = list(files)
        if config.shuffle:
            rng.shuffle(q)
        queues.append(q)

    def dest(k: int, name: str) -> Path:
        return export_dir / f"s{k:02d}" / name if config.layout == "series" else export_dir / f"s{k:02d}_{name}"

    order: list[tuple[int, Path]] = []
    if config.interleave:
        i = 0
        while any(queues):
            for k, q in enumerate(queues):
                if i < len(q):
                    order.append((k, q[i]))
            i += 1
            if all(i >= len(q) for q in queues):
                break
    else:
        order = [(k, p) for k, q in enumerate(queues) for p in q]
    writes: list[Write] = []
    for k, p in order:
        r = rng.random()
        kind: WriteKind = ("chunked" if r < config.chunked_fraction else
                           "rename" if r < config.chunked_fraction + config.rename_fraction else "plain")
        writes.append(Write(kind, p, dest(k, p.name), k))
    extras: list[Write] = []
    all_real = [(k, p) for k, q in enumerate(queues) for p in q]
    for i in range(config.junk):
        extras.append(Write("junk", None, export_dir / f"junk-{i:03d}.dcm", -1))
    for i in range(config.truncated):
        k, p = rng.choice(all_real)
        extras.append(Write("truncated", p, dest(k, f"trunc-{i:03d}.dcm"), k))
    for i in range(config.duplicates):
        k, p = rng.choice(all_real)
        extras.append(Write("duplicate", p, dest(k, f"dup-{i:03d}.dcm"), k))
    for e in extras:
        writes.insert(rng.randint(0, len(writes)), e)
    return writes


def _chunked(src: Path, dest: Path, chunks: int, pause_s: float) -> None:
    data = src.read_bytes()
    step = max(1, len(data) // max(1, chunks))
    with open(dest, "wb") as f:
        for start in range(0, len(data), step):
            f.write(data[start:start + step])
            f.flush()
            if start + step < len(data):
                time.sleep(pause_s)


def _rename(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def execute(write: Write, config: ReplayConfig, rng: random.Random) -> None:
    write.dest.parent.mkdir(parents=True, exist_ok=True)
    if write.kind in ("plain", "duplicate"):
        assert write.src is not None
        shutil.copyfile(write.src, write.dest)
    elif write.kind == "chunked":
        assert write.src is not None
        _chunked(write.src, write.dest, config.chunks, config.chunk_pause_s)
    elif write.kind == "rename":
        assert write.src is not None
        _rename(write.src, write.dest)
    elif write.kind == "truncated":
        assert write.src is not None
        data = write.src.read_bytes()
        write.dest.write_bytes(data[: int(len(data) * rng.uniform(0.5, 0.85))])
    elif write.kind == "junk":
        write.dest.write_bytes(rng.randbytes(rng.randint(2000, 20000)))


def replay(
    src_series: list[list[Path]],
    export_dir: Path,
    config: ReplayConfig = ReplayConfig(),
    *,
    on_written: Callable[[Write, float], None] | None = None,
    stop: threading.Event | None = None,
) -> ReplayResult:
    """Write the series into ``export_dir`` at the configured rate; returns what landed when.

    Chunked writes run in background threads so that their pauses do not slow the schedule down."""
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    writes = plan(src_series, export_dir, config)
    result = ReplayResult(writes=writes)
    lock = threading.Lock()
    def do(w: Write) -> None:
        execute(w, config, random.Random(hash((config.seed, str(w.dest))) & 0xFFFFFFFF))
        t = time.time()
        with lock:
            result.landed[w.dest] = t
        if on_written is not None:
            on_written(w, t)

    t0 = time.monotonic()
    slot = 0
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="replay") as pool:
        futures = []
        for w in writes:
            if stop is not None and stop.is_set():
                break
            if w.kind in ("plain", "chunked", "rename"):  # the rate counts real slices
                delay = t0 + slot / config.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                slot += 1
            if w.kind == "chunked":
                futures.append(pool.submit(do, w))
            else:
                do(w)
        for f in futures:
            f.result()
    result.series_files = [[w.dest for w in writes if w.series == k and w.kind in ("plain", "chunked", "rename")]
                           for k in range(len(src_series))]
    return result
