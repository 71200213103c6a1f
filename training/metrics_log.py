"""Per-epoch metrics of a training run: ``metrics.json`` (one record per epoch) and ``curves.png``.

``metrics.json`` is rewritten after every epoch (atomically), so a run interrupted at any point leaves
a consistent log, and a resumed run continues it (records of epochs that will be redone are dropped).
The plot is redrawn at most every ``plot_every_s`` seconds (matplotlib costs seconds per figure on a
busy CPU, more than a tiny epoch) and always when the run ends (:meth:`finish`).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"


class MetricsLog:
    """Append-only list of per-epoch records ({"epoch": n, "train_loss": ..., ...})."""

    def __init__(self, run_dir: Path, title: str, plot_every_s: float = 60.0) -> None:
        self.run_dir = Path(run_dir)
        self.title = title
        self.plot_every_s = plot_every_s
        self._last_plot = time.monotonic()  # first plot after plot_every_s, or at finish()
        self.records: list[dict[str, Any]] = []
        path = self.run_dir / METRICS_FILE
        if path.is_file():
            try:
                self.records = list(json.loads(path.read_text()).get("epochs", []))
            except (json.JSONDecodeError, AttributeError):
                self.records = []

    def truncate(self, n_epochs: int) -> None:
        """Keep the records of epochs < n_epochs (a resumed run redoes the rest)."""
        self.records = [r for r in self.records if int(r.get("epoch", 0)) < n_epochs]

    def append(self, record: dict[str, Any]) -> None:
        self.records.append({k: _jsonable(v) for k, v in record.items()})
        self.write(plot=time.monotonic() - self._last_plot >= self.plot_every_s)

    def finish(self) -> None:
        """Write the final JSON and plot (call when a run ends or pauses)."""
        self.write(plot=True)

    def series(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.records if key in r and r[key] is not None]

    def write(self, plot: bool = True) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / (METRICS_FILE + ".tmp")
        tmp.write_text(json.dumps({"title": self.title, "epochs": self.records}, indent=1))
        os.replace(tmp, self.run_dir / METRICS_FILE)
        if plot and self.records:
            self.plot(self.run_dir / CURVES_FILE)
            self._last_plot = time.monotonic()

    def plot(self, path: Path) -> Path:
        """One panel per metric (losses share the first panel), x = epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [k for k in self.records[0] if k not in ("epoch", "time_s")] if self.records else []
        keys = [
            k
            for k in keys
            if all(
                isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                for r in self.records
                if k in r
            )
        ]
        losses = [k for k in keys if "loss" in k]
        others = [k for k in keys if "loss" not in k]
        panels: list[list[str]] = ([losses] if losses else []) + [[k] for k in others]
        n = max(len(panels), 1)
        cols = min(3, n)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        epochs = [r["epoch"] for r in self.records]
        for ax, panel in zip(axes.flat, panels):
            for k in panel:
                xs = [e for e, r in zip(epochs, self.records) if k in r]
                ax.plot(xs, self.series(k), marker="o", ms=3, label=k)
            ax.set_xlabel("epoch")
            ax.set_title(", ".join(panel) if len(panel) < 3 else "losses", fontsize=9)
            if len(panel) > 1:
                ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle(self.title, fontsize=10)
        fig.subplots_adjust(
            left=0.08, right=0.98, top=0.86 if rows == 1 else 0.92, bottom=0.12, hspace=0.55, wspace=0.3
        )
        tmp = Path(path).with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=72)
        plt.close(fig)
        os.replace(tmp, path)
        return Path(path)


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
