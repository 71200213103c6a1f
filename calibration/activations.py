"""Per-layer activation ranges of an ONNX model over a calibration set (ONNX Runtime, extra graph outputs).

INT8 maps each tensor's range onto 256 levels; a layer whose range a set under- or over-states is where
quantisation error comes from. This exposes every float tensor that a node produces as an extra graph
output, runs the FP32 model on the set's inputs in batches, and keeps per tensor: min, max, and
percentiles (0.1, 1, 50, 99, 99.9) estimated from a fixed-size random subsample per batch (exact min /
max; percentiles within sampling error, which is what a range plot needs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILES: tuple[float, ...] = (0.1, 1.0, 50.0, 99.0, 99.9)
SAMPLE_PER_BATCH = 4096


@dataclass(frozen=True)
class TensorRange:
    name: str  # the tensor's name in the graph
    node: str  # the node that produces it
    op_type: str
    order: int  # topological position of the node
    min: float
    max: float
    percentiles: dict[str, float]  # "p0.1" .. "p99.9"
    absmax: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _float_outputs(model: Any) -> list[tuple[str, str, str, int]]:
    """(tensor, node name, op type, order) of every float32 node output, by shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    }
    out = []
    for i, node in enumerate(model.graph.node):
        for t in node.output:
            if t and types.get(t) == onnx.TensorProto.FLOAT:
                out.append((t, node.name or f"{node.op_type}_{i}", node.op_type, i))
    return out


def instrumented_session(
    onnx_path: Path, op_types: tuple[str, ...] | None = None, threads: int = 0
) -> tuple[Any, list[tuple[str, str, str, int]]]:
    """An ORT session of the model with every float node output (optionally of ``op_types``) exposed."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    outs = _float_outputs(model)
    if op_types:
        outs = [o for o in outs if o[2] in op_types]
    existing = {o.name for o in model.graph.output}
    for t, _, _, _ in outs:
        if t not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = max(0, threads)
    # graph optimisations would fuse nodes away and hide their outputs: run the graph as written
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, outs


def activation_ranges(
    onnx_path: Path,
    inputs: np.ndarray,
    *,
    batch_size: int = 8,
    seed: int = 0,
    op_types: tuple[str, ...] | None = None,
    progress: Any = None,
) -> list[TensorRange]:
    """Ranges of every float tensor the model computes over ``inputs`` ((N, C, H, W) float32)."""
    sess, outs = instrumented_session(onnx_path, op_types)
    in_name = sess.get_inputs()[0].name
    names = [t for t, _, _, _ in outs]
    rng = np.random.default_rng(seed)
    lo = {t: np.inf for t in names}
    hi = {t: -np.inf for t in names}
    samples: dict[str, list[np.ndarray]] = {t: [] for t in names}
    task = (
        progress.add_task(f"activation ranges: {Path(onnx_path).name}", total=len(inputs))
        if progress
        else None
    )
    for a in range(0, len(inputs), batch_size):
        x = np.ascontiguousarray(inputs[a : a + batch_size], dtype=np.float32)
        results = sess.run(names, {in_name: x})
        for t, y in zip(names, results):
            v = np.asarray(y, dtype=np.float32).reshape(-1)
            if v.size == 0:
                continue
            finite = v[np.isfinite(v)]
            if finite.size:
                lo[t] = min(lo[t], float(finite.min()))
                hi[t] = max(hi[t], float(finite.max()))
                k = min(SAMPLE_PER_BATCH, finite.size)
                samples[t].append(
                    finite[rng.choice(finite.size, size=k, replace=False)] if k < finite.size else finite
                )
        if progress is not None:
            progress.advance(task, len(x))
    ranges = []
    for t, node, op, order in outs:
        if not samples[t]:
            continue
        s = np.concatenate(samples[t])
        pct = np.percentile(s, PERCENTILES)
        ranges.append(
            TensorRange(
                t,
                node,
                op,
                order,
                lo[t],
                hi[t],
                {f"p{p:g}": float(v) for p, v in zip(PERCENTILES, pct)},
                max(abs(lo[t]), abs(hi[t])),
            )
        )
    return ranges


def save_ranges(path: Path, ranges: list[TensorRange], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "tensors": [r.to_dict() for r in ranges]}, indent=1) + "\n")


def load_ranges(path: Path) -> tuple[list[TensorRange], dict[str, Any]]:
    d = json.loads(Path(path).read_text())
    tensors = [TensorRange(**t) for t in d.pop("tensors")]
    return tensors, d


def plot_ranges(
    ranges_by_label: dict[str, list[TensorRange]], path: Path, title: str, max_layers: int = 120
) -> Path:
    """Per layer (x, graph order): min..max as thin bars and p1..p99 as thick bars, one colour per set;
    y on a symmetric log scale so tiny and huge ranges are both visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(ranges_by_label)
    names: list[str] = []
    for lab in labels:
        for r in ranges_by_label[lab]:
            if r.name not in names:
                names.append(r.name)
    order = {r.name: r.order for lab in labels for r in ranges_by_label[lab]}
    names.sort(key=lambda n: order[n])
    step = max(1, int(np.ceil(len(names) / max_layers)))
    shown = names[::step]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.12 * len(shown) + 4), 5.0))
    width = 0.8 / max(1, len(labels))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, lab in enumerate(labels):
        by = {r.name: r for r in ranges_by_label[lab]}
        xs = [i for i, n in enumerate(shown) if n in by]
        rs = [by[shown[i]] for i in xs]
        off = (j - (len(labels) - 1) / 2) * width
        c = colours[j % len(colours)]
        ax.vlines(
            np.asarray(xs) + off, [r.min for r in rs], [r.max for r in rs], colors=c, linewidth=0.8, alpha=0.7
        )
        ax.vlines(
            np.asarray(xs) + off,
            [r.percentiles["p1"] for r in rs],
            [r.percentiles["p99"] for r in rs],
            colors=c,
            linewidth=3.0,
            label=f"{lab} (thin: min..max, thick: p1..p99)",
        )
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel(
        f"layer output in graph order ({len(names)} tensors"
        + (f", every {step}th shown)" if step > 1 else ")")
    )
    ax.set_ylabel("activation value")
    ax.set_title(title)
    ax.axhline(0, color="0.6", linewidth=0.5)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(-1, len(shown))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
