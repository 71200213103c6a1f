"""``cacstream phantom OUT --series N --seed S``: write synthetic CT series with known calcium."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "phantom"
HELP = "write synthetic chest / cardiac CT series (DICOM) with known per-artery calcium truth"
DESCRIPTION = (
    "Generates N realistic phantom series (seeds S, S+1, ...), each in OUT/phantom_<kind>_s<seed>/ as "
    "DICOM CT files plus truth.json (per-artery Agatston, volume, lesions, risk category, per-slice "
    "calcium flags, plaques, scanner) and labels.npz (coronary labels + non-coronary calcium masks). "
    "Exit code 0 when every series was written, 1 when any failed (each failure is named), 2 for bad "
    "arguments."
)

KIND_CHOICES = ("chest", "cardiac_gated", "calibration", "mixed")
CATEGORY_CHOICES = ("0", "1-10", "11-100", "101-400", ">400")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path,
                        help="Output folder; created if missing. One sub-folder per series.")
    parser.add_argument("--series", type=int, default=1,
                        help="Number of series to write (seeds S, S+1, ...). Recommended: 40+ held-out seeds "
                             "for an evaluation set, several hundred for training.")
    parser.add_argument("--seed", type=int, default=0,
                        help="First seed. The same seed always gives the same series; keep evaluation seeds "
                             "disjoint from training seeds (e.g. training from 0, evaluation from 100000).")
    parser.add_argument("--kind", choices=KIND_CHOICES, default="mixed",
                        help="cardiac_gated: ECG-gated calcium-scoring scan of the heart; chest: non-gated "
                             "whole-chest scan with cardiac motion; calibration: QRM-like water phantom with "
                             "calcium inserts (QA); mixed: gated or chest per seed (recommended for training).")
    parser.add_argument("--matrix", type=int, default=512,
                        help="Rows = columns of each slice. 512 is what scanners write (recommended); "
                             "256 or 128 for quick experiments (the field of view shrinks to keep the spacing "
                             "within 0.3-0.8 mm).")
    parser.add_argument("--workers", type=int, default=1,
                        help="Series generated in parallel processes. Recommended: the number of idle cores "
                             "(one 512x512 gated series takes a few seconds on one core).")
    parser.add_argument("--calcium-category", choices=CATEGORY_CHOICES, default=None,
                        help="Force the target coronary risk category of every series (default: drawn, about "
                             "a fifth zero). Useful for balanced evaluation sets; the realised category is "
                             "measured on the image and recorded in truth.json.")
    parser.add_argument("--thickness", type=float, default=None,
                        help="Force the slice thickness in mm (default: drawn from 1.5-5 mm per kind; 3 mm is "
                             "the calcium-scoring standard).")
    parser.add_argument("--ideal", action="store_true",
                        help="No noise, no blur, no motion, point sampling: areas become exact lattice counts "
                             "(for checking scoring code against analytic values; not for training).")
    parser.add_argument("--cartilage-foci-probability", type=float, default=0.0,
                        help="Chance of patchy calcified foci in the costal cartilage (small non-coronary calcium "
                             "the skeletal check cannot exclude). Default 0: the series are exactly those of "
                             "earlier versions; 0.3 for a training set that should show the U-Net this hard "
                             "negative (docs/phantom.md).")
    parser.add_argument("--lean-coronary-fat-probability", type=float, default=0.0,
                        help="Chance, per artery, of a thin soft-tissue sleeve instead of the 3.5 mm epicardial fat "
                             "pad, so plaques sit in surroundings like real ones (COCA ROI plaques: 40 %% fat around "
                             "them, default phantoms 89 %%). Default 0 (unchanged series); an experiment, not the "
                             "default weights' data (docs/models.md, 'Why the real plaques are missed').")
    parser.add_argument("--aortic-calcium-probability", type=float, default=0.45,
                        help="Chance that the aorta carries wall calcium (default 0.45, as in the default weights' "
                             "data; raised further with a high coronary burden). Raise it for a hard-negative set.")
    parser.add_argument("--aortic-part-weights", type=float, nargs=3, default=(0.2, 0.35, 0.45),
                        metavar=("ROOT", "ARCH", "DESCENDING"),
                        help="Relative odds that an aortic wall plaque lies on the root / ascending aorta, the arch "
                             "or the descending aorta (default 0.2 0.35 0.45). Root calcium sits at the coronary "
                             "ostia's levels and is the aortic calcium the v1.3 U-Net labels LM; favour it "
                             "(e.g. 0.7 0.15 0.15) for a hard-negative training set (docs/models.md).")
    parser.add_argument("--valve-calcium-probability", type=float, default=0.15,
                        help="Chance of mitral-annulus calcium and, separately, of aortic-valve calcium (default "
                             "0.15 each): non-coronary calcium beside the LCX and the coronary ostia.")
    parser.add_argument("--transfer-syntax", default="explicit_le",
                        help="DICOM transfer syntax of the files: explicit_le (default, recommended), "
                             "implicit_le, deflated_le, or a lossless compressed one (rle, jpeg_ls, "
                             "jpeg2000_lossless) when its encoder is installed.")
    parser.add_argument("--no-labels", action="store_true",
                        help="Do not write labels.npz (saves ~100 kB per series; the truth JSON is still "
                             "written). Keep the labels for training the segmenter.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace series folders that already exist (default: refuse, so a typo in "
                             "--seed cannot silently clobber a dataset).")
    parser.add_argument("--figure", type=Path, default=None,
                        help="Also write the real-vs-phantom comparison PNG to this path (needs the COCA "
                             "samples; see docs/phantom.md).")


def _one(job: tuple) -> dict:
    """Generate and write one series (runs in a worker process)."""
    import time

    from cacstream.training.phantom.config import PhantomConfig
    from cacstream.training.phantom.generate import make_phantom, write_series

    seed, out, cfg_kwargs, write_labels, ts = job
    t0 = time.perf_counter()
    case = make_phantom(seed, PhantomConfig(**cfg_kwargs))
    paths = write_series(case, out, write_labels=write_labels, transfer_syntax=ts)
    return {
        "seed": seed, "folder": paths[0].parent.name, "kind": case.kind, "slices": case.geometry.n_slices,
        "agatston": case.truth["agatston_total"], "risk": case.truth["risk_category"],
        "threshold_total": case.truth.get("threshold_mode", {}).get("agatston_total"),
        "seconds": time.perf_counter() - t0,
    }


def run(args: argparse.Namespace) -> int:
    import sys
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from cacstream.training.phantom.config import PhantomConfig
    from cacstream.training.phantom.generate import resolve_kind

    console = Console(stderr=True)
    if args.series < 1 or args.seed < 0 or args.workers < 1:
        console.print("[red]--series and --workers must be >= 1 and --seed >= 0[/red]")
        return 2
    cfg_kwargs = {"kind": args.kind, "matrix": args.matrix, "thickness_mm": args.thickness,
                  "calcium_category": args.calcium_category, "ideal": args.ideal,
                  "cartilage_foci_probability": args.cartilage_foci_probability,
                  "lean_coronary_fat_probability": args.lean_coronary_fat_probability,
                  "aortic_calcium_probability": args.aortic_calcium_probability,
                  "aortic_part_weights": tuple(args.aortic_part_weights),
                  "valve_calcium_probability": args.valve_calcium_probability}
    try:
        config = PhantomConfig(**cfg_kwargs)
        from cacstream.training.dicom_writer import transfer_syntax_uid

        transfer_syntax_uid(args.transfer_syntax)
    except ValueError as exc:
        console.print(f"[red]bad option: {exc}[/red]")
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seed, args.seed + args.series))
    clashes = [s for s in seeds if (out / f"phantom_{resolve_kind(s, config)}_s{s:06d}" / "truth.json").exists()]
    if clashes and not args.overwrite:
        console.print(f"[red]{len(clashes)} series already exist in {out} (first: seed {clashes[0]}); "
                      "pass --overwrite to replace them or choose other seeds[/red]")
        return 2
    jobs = [(s, out, cfg_kwargs, not args.no_labels, args.transfer_syntax) for s in seeds]
    done: list[dict] = []
    failed: list[tuple[int, str]] = []
    columns = (TextColumn("[bold]phantoms"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("phantoms", total=len(jobs))
        if args.workers == 1:
            for job in jobs:
                try:
                    done.append(_one(job))
                except Exception as exc:  # noqa: BLE001 - report every failure by seed, keep going
                    failed.append((job[0], f"{type(exc).__name__}: {exc}"))
                progress.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=args.workers) as pool:
                futures = {pool.submit(_one, job): job[0] for job in jobs}
                for fut in as_completed(futures):
                    try:
                        done.append(fut.result())
                    except Exception as exc:  # noqa: BLE001
                        failed.append((futures[fut], f"{type(exc).__name__}: {exc}"))
                    progress.advance(task)
    done.sort(key=lambda r: r["seed"])
    table = Table(title=f"{len(done)} phantom series in {out}")
    # calibration phantoms have no coronaries: their column shows the threshold-mode (whole slice) total
    for col in ("seed", "folder", "slices", "Agatston (truth)", "risk", "s"):
        table.add_column(col)
    for r in done[:50]:
        score = r["agatston"] if r["kind"] != "calibration" else r["threshold_total"]
        risk = r["risk"] if r["kind"] != "calibration" else "-"
        table.add_row(str(r["seed"]), r["folder"], str(r["slices"]), f"{score:.1f}", risk, f"{r['seconds']:.1f}")
    console.print(table)
    if len(done) > 50:
        console.print(f"... and {len(done) - 50} more")
    if args.figure is not None:
        from cacstream.training.phantom.figure import write_figure

        try:
            write_figure(args.figure)
            console.print(f"figure written to {args.figure}")
        except (FileNotFoundError, ValueError) as exc:
            console.print(f"[red]figure not written: {exc}[/red]")
            failed.append((-1, f"figure: {exc}"))
    for seed, msg in failed:
        print(f"phantom seed {seed} failed: {msg}", file=sys.stderr)
    return 1 if failed else 0
