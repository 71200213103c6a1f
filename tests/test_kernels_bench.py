"""``cacstream bench kernels`` runs end to end on a small volume and writes the promised JSON."""

from __future__ import annotations

import argparse
import json

import numpy as np

from cacstream.kernels import bench


def test_bench_small_volume_writes_json(tmp_path) -> None:
    out = tmp_path / "kernels.json"
    rc = bench.main(["--slices", "4", "--size", "96", "--input-size", "32", "--repeats", "2", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    for key in ("numpy_ms", "cpp_ms", "memcpy_ms", "speedup_cpp_vs_numpy", "cpp_over_memcpy", "samples_ms",
                "cpp_over_memcpy_paired", "cpp_cpu_ms", "memcpy_cpu_ms"):
        assert key in data
    assert data["shape"] == [4, 96, 96] and data["config"]["input_size"] == 32
    assert len(data["samples_ms"]["cpp"]) == 2
    assert data["numpy_ms"] > 0 and data["cpp_ms"] > 0 and data["memcpy_ms"] > 0
    assert ("cupy_ms" in data) == ("d2d_copy_ms" in data)


def test_bench_arguments_have_help() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    for action in parser._actions:
        if action.dest != "help":
            assert action.help, f"--{action.dest} has no help text"
    assert bench.NAME == "kernels" and bench.HELP


def test_synthetic_volume_looks_like_ct() -> None:
    vol = bench.synthetic_volume(2, 128, seed=1)
    assert vol.dtype == np.int16 and vol.shape == (2, 128, 128)
    hu = vol.astype(np.float32) - 1024
    assert (hu < -900).mean() > 0.2  # air around the body
    assert ((hu > -200) & (hu < 200)).mean() > 0.2  # soft tissue
    assert (hu > 300).any()  # bone / calcium
