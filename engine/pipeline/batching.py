"""A bounded queue that hands out batches: up to N items, or whatever arrived within a maximum wait.

The model stages batch slices across series with it: a full batch goes at once (throughput), a
partial one waits at most ``max_wait_s`` after its first item arrived (latency). ``put`` blocks when
the queue is full, which is the pipeline's backpressure.
"""

from __future__ import annotations

import queue
import time
from typing import Generic, TypeVar

T = TypeVar("T")

_CLOSED = object()


class MaxWaitBatcher(Generic[T]):
    def __init__(self, max_size: int, max_wait_s: float, capacity: int = 64) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._q: queue.Queue[object] = queue.Queue(maxsize=max(capacity, max_size))
        self._closed = False

    def put(self, item: T) -> None:
        """Add an item; blocks while the queue is full (backpressure)."""
        self._q.put(item)

    def close(self) -> None:
        """No more items: :meth:`next_batch` returns what is left, then None."""
        self._q.put(_CLOSED)

    def qsize(self) -> int:
        return self._q.qsize()

    def next_batch(self) -> list[T] | None:
        """Block for the first item, then collect until the batch is full or the wait is over.

        Returns None once the batcher is closed and drained."""
        if self._closed:
            return None
        first = self._q.get()
        if first is _CLOSED:
            self._closed = True
            return None
        batch: list[T] = [first]  # type: ignore[list-item]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if item is _CLOSED:
                self._closed = True
                break
            batch.append(item)  # type: ignore[arg-type]
        return batch
