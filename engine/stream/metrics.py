"""Optional Prometheus text endpoint (``--metrics-port``), bound to 127.0.0.1 only.

Plain ``http.server``: the exposition format is a few lines of text and a workstation needs no client
library for it. Counters and gauges are read from a callback at scrape time, so the engine never
blocks on a scraper.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: name → (type, help) of every metric the engine exports.
METRICS: dict[str, tuple[str, str]] = {
    "cacstream_files_total": ("gauge", "Files recorded in the state database, by status."),
    "cacstream_series_reported_total": ("counter", "Report versions published since start, by outcome."),
    "cacstream_slices_scored_total": ("counter", "Slices scored since start."),
    "cacstream_open_series": ("gauge", "Series assembled and not yet reported."),
    "cacstream_pending_files": ("gauge", "Files seen and not yet settled."),
    "cacstream_queue_depth": ("gauge", "Items waiting in each pipeline queue."),
    "cacstream_report_latency_seconds_sum": ("counter", "Sum of completion-to-report times."),
    "cacstream_report_latency_seconds_count": ("counter", "Number of completion-to-report times."),
    "cacstream_rescans_total": ("counter", "Full rescans of the export folder."),
    "cacstream_watch_overflows_total": ("counter", "inotify queue overflows (each triggers a rescan)."),
}

Sample = tuple[str, dict[str, str], float]


def render(samples: list[Sample]) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    seen: set[str] = set()
    for name, labels, value in samples:
        if name not in seen and name in METRICS:
            kind, text = METRICS[name]
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            seen.add(name)
        lab = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                       for k, v in sorted(labels.items()))
        lines.append(f"{name}{{{lab}}} {float(value):g}" if lab else f"{name} {float(value):g}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves ``/metrics`` on 127.0.0.1:port from ``collect()`` (port 0 picks a free port)."""

    def __init__(self, port: int, collect: Callable[[], list[Sample]]) -> None:
        collect_fn = collect

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                body = render(collect_fn()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # no access log on stderr
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="cac-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
