"""Steps of ``scripts/train-default-weights.sh`` that are not training: fill the phantom cache before
the trainers run in parallel, and package an exported weights folder as the repository's default.

    python -m cacstream.training.default_weights cache CONFIG... [--workers 2]
    python -m cacstream.training.default_weights package EXPORT_DIR OUT_DIR --record JSON...

``cache`` generates every phantom of the configs' sources into their ``cache_dir`` (the trainers
would generate missing ones themselves, but two trainers started together on an empty cache would
both render the same seeds into the same folders). Workers take disjoint seeds, so they never
write the same case.

``package`` makes the shipped folder small: every floating-point tensor is stored as float16
(``load_weights`` copies them into the float32 modules; the served model *is* the fp16-rounded one,
and everything reported about the default weights is measured on it), ONNX files are left out and
made on first use (``engine/inference/onnx_cache.py``: ``"onnx_on_first_use": true``), and the
training record (data, seeds, commands, deviations from the paper) is merged into ``config.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

STORAGE_DTYPE = "float16"


def _phantom_jobs(configs: list[tuple[str, Path]]) -> list[tuple[dict[str, Any], int]]:
    from cacstream.training.config import config_to_dict, load_config

    jobs: dict[tuple[str, int], tuple[dict[str, Any], int]] = {}
    for stage, path in configs:
        cfg = load_config(stage, path)
        for src in cfg.data.sources:  # type: ignore[attr-defined]
            if src.kind != "phantom" or not src.cache_dir:
                continue
            first, n = src.seeds
            for seed in range(first, first + n):
                key = (json.dumps(src.phantom, sort_keys=True) + src.cache_dir, seed)
                jobs.setdefault(key, (config_to_dict(src), seed))
    return list(jobs.values())


def _make_one(job: tuple[dict[str, Any], int]) -> str:
    import dataclasses

    from cacstream.training.config import SourceConfig
    from cacstream.training.datasets.sources import iter_source

    src_d, seed = job
    fields = {f.name for f in dataclasses.fields(SourceConfig)}
    src = SourceConfig(**{k: v for k, v in src_d.items() if k in fields})
    src = dataclasses.replace(src, seeds=[seed, 1])
    case = next(iter(iter_source(src)))
    return f"{case.case_id} {tuple(case.hu.shape)} calcified slices {int(case.calcified_slices().sum())}"


def fill_cache(configs: list[tuple[str, Path]], workers: int = 1) -> int:
    """Generate (or find) every cached phantom the configs use; returns how many there are."""
    jobs = _phantom_jobs(configs)
    if workers <= 1:
        for j in jobs:
            print(_make_one(j), flush=True)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for line in pool.map(_make_one, jobs, chunksize=1):
                print(line, flush=True)
    return len(jobs)


def to_fp16(src: Path, dst: Path) -> dict[str, int]:
    """Copy a safetensors file with floating tensors stored as float16 (others unchanged)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as fh:
        metadata = fh.metadata() or {}
    tensors = load_file(str(src))
    out, n16 = {}, 0
    for k, v in tensors.items():
        if v.is_floating_point():
            h = v.to(torch.float16)
            if not torch.isfinite(h).all():
                raise ValueError(f"{src}: tensor {k} overflows float16 (max |v| {float(v.abs().max()):.3g})")
            out[k], n16 = h.contiguous(), n16 + 1
        else:
            out[k] = v.contiguous()
    save_file(out, str(dst), metadata={**metadata, "storage_dtype": STORAGE_DTYPE})
    return {"tensors": len(out), "float16": n16}


def package(export_dir: Path, out_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """``export_dir`` (from ``cacstream export``) → ``out_dir``: fp16 safetensors, no ONNX (made on
    first use), ``record`` merged into config.json under ``"training"``."""
    from cacstream.training.weights import CONFIG_FILE, FILTER_KEY, SEGMENTER_KEY, read_config

    export_dir, out_dir = Path(export_dir), Path(out_dir)
    cfg = read_config(export_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for key in (FILTER_KEY, SEGMENTER_KEY):
        sec = cfg.get(key)
        if sec is None:
            continue
        stats = to_fp16(export_dir / sec["weights"], tmp / sec["weights"])
        sec["storage_dtype"] = STORAGE_DTYPE
        sec["storage_note"] = (
            f"{stats['float16']} floating tensors stored as float16 and loaded into float32 modules; the "
            "served model is the fp16-rounded one and every metric in this file was measured on it"
        )
        sec["onnx_on_first_use"] = True
        sec["export_onnx_check_fp32"] = sec.pop("onnx_check", None)
        sec.pop("onnx_sha256_16", None)
    cfg["training"] = record
    (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=1) + "\n")
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cacstream.training.default_weights", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="generate the phantom cache of training configs (before parallel training).")
    c.add_argument("configs", nargs="+", type=Path, help="stage configs (<profile>_<stage>.toml).")
    c.add_argument("--workers", type=int, default=1, help="parallel processes (one per free core).")
    p = sub.add_parser("package", help="fp16 safetensors + config.json (training record) into the default folder.")
    p.add_argument("export_dir", type=Path, help="a `cacstream export --no-onnx` or full export folder.")
    p.add_argument("out_dir", type=Path, help="the folder to (re)write, e.g. engine/weights/default.")
    p.add_argument("--record", type=Path, required=True, help="JSON file with the training record to merge.")
    args = ap.parse_args(argv)
    if args.cmd == "cache":
        pairs = [(path.stem.split("_")[-1], path) for path in args.configs]
        n = fill_cache(pairs, args.workers)
        print(f"{n} phantom series cached")
        return 0
    record = json.loads(args.record.read_text())
    cfg = package(args.export_dir, args.out_dir, record)
    print(f"packaged {args.out_dir} ({', '.join(k for k in ('slice_filter', 'segmenter') if k in cfg)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
