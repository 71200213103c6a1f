"""Where the engine finds its model weights: --weights, then $CACSTREAM_WEIGHTS, then the packaged default."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

#: Name of the weights folder shipped inside the package (engine/weights/<name>).
DEFAULT_WEIGHTS_NAME = "default"


class WeightsNotFound(RuntimeError):
    """No usable weights folder; the message says where the engine looked."""


def packaged_weights_dir() -> Path:
    return Path(str(resources.files("cacstream.engine").joinpath("weights", DEFAULT_WEIGHTS_NAME)))


def resolve_weights_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the weights folder to use, or raise WeightsNotFound naming every place tried."""
    tried: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if explicit:
        candidates.append(("--weights", Path(explicit)))
    elif os.environ.get("CACSTREAM_WEIGHTS"):
        candidates.append(("$CACSTREAM_WEIGHTS", Path(os.environ["CACSTREAM_WEIGHTS"])))
    else:
        candidates.append(("packaged default", packaged_weights_dir()))
    for label, path in candidates:
        if (path / "config.json").is_file():
            return path
        tried.append(f"{label}: {path} ({'no config.json' if path.is_dir() else 'no such folder'})")
    raise WeightsNotFound(
        "no model weights installed — looked at " + "; ".join(tried) + ". Train and export them "
        "(`cacstream train ...`, `cacstream export ...`) and pass --weights DIR, or score phantoms/QA "
        "scans with --mode threshold."
    )
