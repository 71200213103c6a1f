"""Which files in the export folder are new or changed: watchdog events plus a periodic full rescan.

inotify (watchdog's default observer on Linux) tells us about a file the moment it is written, closed
or renamed into place. Events can be lost — the kernel queue overflows under a burst, a network share
(SMB/NFS) sends none at all, a folder is created and filled before its watch exists — so a full rescan
runs periodically as a safety net, at start-up, when a new folder appears, and at once when the
inotify queue overflows (watchdog logs the overflow; we listen for that record). ``--polling`` uses
watchdog's polling observer for network shares.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_OVERFLOW_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")


class _OverflowListener(logging.Handler):
    def __init__(self, on_overflow) -> None:
        super().__init__(level=logging.WARNING)
        self._on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._on_overflow()


def walk_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (hidden folders are not searched; hidden files are listed)."""
    stack = [Path(root)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if not e.name.startswith("."):
                        stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    yield Path(e.path)
            except OSError:
                continue


class FolderWatcher:
    """Collects paths to look at; :meth:`drain` hands them to the engine's loop."""

    def __init__(self, root: Path, *, polling: bool = False, poll_interval_s: float = 1.0,
                 rescan_interval_s: float = 30.0) -> None:
        self.root = Path(root)
        self.polling = polling
        self.poll_interval_s = poll_interval_s
        self.rescan_interval_s = rescan_interval_s
        self._lock = threading.Lock()
        self._paths: set[Path] = set()
        self._dirs: set[Path] = set()
        self._rescan = True  # a full scan at start-up
        self._last_rescan = 0.0
        self.wakeup = threading.Event()
        self.overflows = 0
        self.rescans = 0
        self._observer = None
        self._listener = _OverflowListener(self._overflowed)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FolderWatcher:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = [getattr(event, "dest_path", None), event.src_path]
                for p in paths:
                    if p:
                        p = Path(os.fsdecode(p))
                        if event.is_directory:
                            if event.event_type in ("created", "moved"):
                                watcher._add_dir(p)
                        else:
                            watcher._add(p)

        for name in _OVERFLOW_LOGGERS:
            logging.getLogger(name).addHandler(self._listener)
        self._observer = PollingObserver(timeout=self.poll_interval_s) if self.polling else Observer()
        self._observer.schedule(Handler(), str(self.root), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        return self

    def stop(self) -> None:
        for name in _OVERFLOW_LOGGERS:
            logging.getLogger(name).removeHandler(self._listener)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    # ------------------------------------------------------------------ events
    def _add(self, p: Path) -> None:
        with self._lock:
            self._paths.add(p)
        self.wakeup.set()

    def _add_dir(self, p: Path) -> None:
        with self._lock:
            self._dirs.add(p)
        self.wakeup.set()

    def _overflowed(self) -> None:
        self.overflows += 1
        self.request_rescan()

    def request_rescan(self) -> None:
        with self._lock:
            self._rescan = True
        self.wakeup.set()

    def drain(self, now: float | None = None) -> set[Path]:
        """Paths reported since the last call, plus every file of the folder when a rescan is due."""
        now = time.monotonic() if now is None else now
        with self._lock:
            paths, self._paths = self._paths, set()
            dirs, self._dirs = self._dirs, set()
            rescan = self._rescan or now - self._last_rescan >= self.rescan_interval_s
            self._rescan = False
        self.wakeup.clear()
        for d in dirs:  # a new folder may have been filled before its watch existed
            paths.update(walk_files(d))
        if rescan:
            self._last_rescan = now
            self.rescans += 1
            paths.update(walk_files(self.root))
        return paths
