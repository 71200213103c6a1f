"""Evaluation metrics of the slice filter and the segmenter (numpy, independent of torch)."""

from __future__ import annotations

import math

import numpy as np


def binary_metrics(probs: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, float]:
    """Confusion counts and rates of ``probs >= threshold`` against 0/1 ``targets``."""
    pred = np.asarray(probs) >= threshold
    t = np.asarray(targets) > 0.5
    tp = int(np.sum(pred & t))
    fp = int(np.sum(pred & ~t))
    tn = int(np.sum(~pred & ~t))
    fn = int(np.sum(~pred & t))

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    prec = ratio(tp, tp + fp)
    sens = ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": sens,
        "specificity": ratio(tn, tn + fp),
        "precision": prec,
        "f1": f1,
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "threshold": float(threshold),
    }


def roc_auc(probs: np.ndarray, targets: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties counted half."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets) > 0.5
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    i = 0
    while i < len(p):  # average ranks over ties
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_for_sensitivity(probs: np.ndarray, targets: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity (probs >= threshold) reaches ``target``.

    With m = ceil(target × n_pos), it is the m-th largest positive probability: every higher threshold
    misses more than the allowed share of calcified slices. NaN when there are no positives.
    """
    p = np.asarray(probs, dtype=np.float64)
    pos = np.sort(p[np.asarray(targets) > 0.5])[::-1]
    if not len(pos):
        return float("nan")
    m = max(1, math.ceil(target * len(pos) - 1e-9))
    return float(pos[min(m, len(pos)) - 1])


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[int, dict[str, float]]:
    """Per class c ≥ 1: pixel counts and Dice = 2TP / (2TP + FP + FN) (NaN when c is absent in both)."""
    out: dict[int, dict[str, float]] = {}
    for c in range(1, num_classes):
        p, t = pred == c, target == c
        tp = int(np.sum(p & t))
        fp = int(np.sum(p & ~t))
        fn = int(np.sum(~p & t))
        d = 2 * tp + fp + fn
        out[c] = {"tp": tp, "fp": fp, "fn": fn, "dice": (2 * tp / d) if d else float("nan")}
    return out
