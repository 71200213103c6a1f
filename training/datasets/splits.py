"""Patient-level train / validation / test splits (never slice-level: slices of one patient are
near-duplicates, a slice-level split would grade the models on their own training data).

Two methods:

* ``hash`` (the default when ``stratify`` is false): a patient's split is a pure function of (seed,
  patient id), so DINO, the classifier and the U-Net put every patient in the same split even when
  their data configs list different sources (DINO also sees unlabelled patients).
* stratified (``stratify`` true): patients are shuffled within strata (calcified / calcium-free) and
  interleaved, so every split gets its share of both. It depends on the set of patients, so give the
  stages the same sources (or explicit lists) when using it.

Explicit ``train`` / ``val`` / ``test`` lists override both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cacstream.training.config import SplitConfig


class SplitError(ValueError):
    pass


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    method: str

    def of(self, name: str) -> tuple[str, ...]:
        if name not in ("train", "val", "test"):
            raise KeyError(name)
        return getattr(self, name)

    def where(self, patient_id: str) -> str | None:
        for name in ("train", "val", "test"):
            if patient_id in self.of(name):
                return name
        return None

    def to_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
        }

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> Split:
        d = json.loads(Path(path).read_text())
        return cls(tuple(d["train"]), tuple(d["val"]), tuple(d["test"]), str(d.get("method", "loaded")))


def assert_disjoint(split: Split) -> None:
    """Raise if any patient is in two splits."""
    seen: dict[str, str] = {}
    for name in ("train", "val", "test"):
        for pid in split.of(name):
            if pid in seen:
                raise SplitError(f"patient {pid!r} is in both {seen[pid]} and {name}")
            seen[pid] = name


def _unit_hash(seed: int, pid: str) -> float:
    h = hashlib.sha256(f"{seed}:{pid}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_patients(
    patients: Iterable[str], cfg: SplitConfig, calcified: Mapping[str, bool] | None = None
) -> Split:
    """Assign every patient to exactly one of train / val / test according to ``cfg``."""
    ids = sorted(set(patients))
    if cfg.train or cfg.val or cfg.test:
        split = Split(
            tuple(p for p in cfg.train), tuple(p for p in cfg.val), tuple(p for p in cfg.test), "explicit"
        )
        assert_disjoint(split)
        return split
    if not cfg.stratify:
        groups: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for pid in ids:
            u = _unit_hash(cfg.seed, pid)
            name = (
                "test"
                if u < cfg.test_fraction
                else "val"
                if u < cfg.test_fraction + cfg.val_fraction
                else "train"
            )
            groups[name].append(pid)
        return Split(
            tuple(groups["train"]), tuple(groups["val"]), tuple(groups["test"]), f"hash(seed={cfg.seed})"
        )
    calcified = calcified or {}
    rng = np.random.default_rng(cfg.seed)
    strata: dict[bool, list[str]] = {True: [], False: []}
    for pid in ids:
        strata[bool(calcified.get(pid, False))].append(pid)
    keyed: list[tuple[float, int, str]] = []
    for s, members in strata.items():
        order = rng.permutation(len(members))
        for rank, j in enumerate(order):
            # position in [0, 1) within the stratum: interleaving by it mixes strata proportionally
            keyed.append(((rank + 0.5) / len(members), int(s), members[j]))
    keyed.sort()
    ordered = [pid for _, _, pid in keyed]
    n = len(ordered)
    n_test = int(round(cfg.test_fraction * n))
    n_val = int(round(cfg.val_fraction * n))
    if n >= 3:  # small sets: a requested split gets at least one patient
        n_test = max(n_test, 1 if cfg.test_fraction > 0 else 0)
        n_val = max(n_val, 1 if cfg.val_fraction > 0 else 0)
    if n_test + n_val >= n:
        raise SplitError(
            f"{n} patients cannot fill val ({cfg.val_fraction}) and test ({cfg.test_fraction}) "
            "and keep some for training"
        )
    test, val, train = ordered[:n_test], ordered[n_test : n_test + n_val], ordered[n_test + n_val :]
    return Split(
        tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)), f"stratified(seed={cfg.seed})"
    )
