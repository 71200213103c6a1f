"""Benchmarks of the whole engine (``cacstream bench pipeline``); the per-part benchmarks live beside their
parts (``kernels/bench.py``, ``engine/scoring/bench.py``, ``engine/stream/latency.py``)."""
