"""Typed configurations of the three trainers (DINO-LG pretraining, slice classifier, U-Net), read from
JSON or TOML files given by ``cacstream train STAGE --config FILE``.

Every field carries its documentation in ``metadata["help"]``; ``cacstream train STAGE --show-config``
prints all of them with their defaults, and :func:`describe_config` renders the same text. Unknown keys,
wrong types and impossible values are errors that name the file and the key (a typo must never fall
back silently to a default). This module imports no torch, so the CLI stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import tomllib
from cacstream.kernels.config import PreprocessConfig


class ConfigError(ValueError):
    """A configuration file that cannot be used, with the file and key in the message."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (dict, list)) or (
        dataclasses.is_dataclass(default) and not isinstance(default, type)
    ):
        value = default
        return field(
            default_factory=lambda: (
                dataclasses.replace(value) if dataclasses.is_dataclass(value) else type(value)(value)
            ),
            metadata={"help": help, **kw},
        )
    return field(default=default, metadata={"help": help, **kw})


# ----------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SourceConfig:
    """One place cases come from. A case is one CT series of one patient (HU volume, optional labels)."""

    kind: Literal["npz", "case_dir", "phantom", "coca", "mask_folder"] = _f(
        "npz",
        "npz: a folder of <case>.npz files (hu, labels, pixel_spacing_mm, patient_id); case_dir: a "
        "cache folder of <case>/hu.npy + labels.npy + case.json (memory-mapped, for large sets); phantom: "
        "series made by cacstream.training.phantom (generated on the fly, cached under cache_dir when set); "
        "coca: gated COCA patients with calcium ROIs (labels) or non-gated ones (no labels); mask_folder: "
        "DICOM series with mask files (cacstream.training.data.mask_folders).",
    )
    path: str = _f(
        "",
        "folder of the source (npz, case_dir, coca root, mask folder root); relative paths "
        "are relative to the config file.",
    )
    seeds: list[int] = _f(
        [], "phantom: [first_seed, count]; seeds used for training must never be used for evaluation."
    )
    phantom: dict[str, Any] = _f({}, "phantom: keyword arguments of PhantomConfig (kind, matrix size, ...).")
    patients: list[str] = _f([], "coca / mask_folder: patient ids to use; empty = all found.")
    gated: bool = _f(True, "coca: true = gated scans with ROIs (labelled); false = non-gated (unlabelled).")
    cache_dir: str = _f(
        "",
        "phantom / coca: where to cache decoded cases as case_dir folders; empty = no "
        "cache (regenerate every run).",
    )
    use_labels: bool = _f(
        True,
        "false = treat this source as unlabelled even if it has labels (DINO "
        "ablations; never for the classifier or U-Net).",
    )


@dataclass(frozen=True)
class SplitConfig:
    """Patient-level split: a patient's slices are all in one split, never spread over two."""

    val_fraction: float = _f(
        0.1, "fraction of patients held out for validation (early stopping, operating threshold)."
    )
    test_fraction: float = _f(0.1, "fraction of patients held out for testing; never touched by training.")
    seed: int = _f(0, "seed of the patient shuffle (the split is a pure function of patient ids and seed).")
    stratify: bool = _f(
        True,
        "split calcified and calcium-free patients separately so every split gets "
        "both (the paper stratified by risk category).",
    )
    train: list[str] = _f(
        [],
        "explicit training patient ids (then val and test must be explicit too, "
        "and the fractions are ignored).",
    )
    val: list[str] = _f([], "explicit validation patient ids.")
    test: list[str] = _f([], "explicit test patient ids.")


@dataclass(frozen=True)
class DataConfig:
    sources: list[SourceConfig] = _f([], "where the cases come from (at least one).")
    split: SplitConfig = _f(SplitConfig(), "patient-level train / val / test split.")
    slice_stride: int = _f(
        1,
        "use every n-th slice of each series (2 halves the data of thin-slice series; "
        "calcified slices are always kept).",
    )
    max_slices_per_case: int = _f(
        0,
        "cap slices per case (0 = no cap); keeps one long series from "
        "dominating. Calcified slices are kept first.",
    )


# ----------------------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = _f("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")
    precision: Literal["fp32", "bf16", "fp16"] = _f(
        "fp32",
        "autocast precision of forward passes: fp32 (CPU default), bf16 (CPUs with AMX/AVX512-BF16, "
        "Ampere+ GPUs), fp16 (GPUs, with a gradient scaler; DINO's use_fp16).",
    )
    compile: bool = _f(False, "torch.compile the models (GPUs; minutes of compile time, then faster).")
    threads: int = _f(0, "CPU threads for torch (0 = leave torch's default).")
    num_workers: int = _f(0, "data-loader worker processes (0 = in the main process; 2-8 on a GPU box).")
    seed: int = _f(
        0,
        "seed of everything random (crops, shuffles, init); each epoch reseeds from "
        "(seed, epoch) so a resumed run replays exactly.",
    )


# ------------------------------------------------------------------------------------------- DINO


@dataclass(frozen=True)
class AugmentConfig:
    """Medical augmentations (paper Table 1, §3.2.1): no solarisation, no colour jitter."""

    hflip_p: float = _f(0.5, "probability of a horizontal flip.")
    vflip_p: float = _f(0.5, "probability of a vertical flip (Table 1 lists it for medical images).")
    jitter_p: float = _f(0.8, "probability of applying brightness/contrast jitter (DINO's RandomApply 0.8).")
    brightness: float = _f(0.4, "brightness factor drawn in [1 - b, 1 + b] (paper: ±40 %).")
    contrast: float = _f(0.4, "contrast factor drawn in [1 - c, 1 + c] (paper: ±40 %).")
    blur_p_global1: float = _f(1.0, "3×3 Gaussian blur probability on global crop 1 (DINO: 1.0).")
    blur_p_global2: float = _f(0.1, "3×3 Gaussian blur probability on global crop 2 (DINO: 0.1).")
    blur_p_local: float = _f(0.5, "3×3 Gaussian blur probability on local crops (DINO: 0.5).")
    blur_sigma: list[float] = _f([0.1, 2.0], "range of the blur's sigma in pixels (DINO: 0.1-2.0).")
    sharpness_p: float = _f(0.8, "probability of the sharpness adjustment (paper: 0.8).")
    sharpness: float = _f(1.5, "sharpness factor (paper: 1.5; torchvision adjust_sharpness semantics).")
    noise_p: float = _f(0.5, "probability of additive Gaussian noise.")
    noise_std: float = _f(
        0.03,
        "maximum noise standard deviation, in units of the [0, 1] intensity range "
        "(drawn uniformly in [0, max]).",
    )


@dataclass(frozen=True)
class MultiCropConfig:
    global_crops_scale: list[float] = _f([0.4, 1.0], "area range of the 2 global crops (DINO: 0.4-1).")
    local_crops_scale: list[float] = _f(
        [0.05, 0.4], "area range of local crops, random and guided (paper: 0.05-0.4)."
    )
    local_crop_size: int = _f(
        96, "side of local crops in pixels (DINO: 96 for 224 global crops); a multiple of the patch size."
    )
    rlc: int = _f(8, "RLC: random local crops per slice, every slice (paper Table 4: 8).")
    glc: int = _f(4, "GLC: guided local crops per labelled slice, centred on calcium (paper: 4; 0 = DINO).")
    guided_jitter: float = _f(
        0.5,
        "how far the chosen calcium pixel may sit from the guided crop's centre, "
        "as a fraction of the half-width (0 = always centred).",
    )
    interpolation: Literal["bicubic", "bilinear"] = _f("bicubic", "resampling of crops (DINO: bicubic).")


@dataclass(frozen=True)
class DinoConfig:
    """DINO-LG pretraining of the ViT backbone (paper §3.2, §4.1; facebookresearch/dino defaults)."""

    arch: str = _f(
        "vit_small_patch16",
        "backbone from the model registry (vit_{tiny,small,base}_patch{8,16}; "
        "the paper uses vit_base_patch8).",
    )
    arch_kwargs: dict[str, Any] = _f(
        {},
        "overrides of the registered architecture (e.g. depth for tiny CI models); recorded in the weights.",
    )
    preprocess: PreprocessConfig = _f(
        PreprocessConfig(),
        "HU → model input (normalisation, input_size = global crop size = the slice filter's input size).",
    )
    out_dim: int = _f(65536, "K, prototypes of the DINO head (DINO: 65536; 4096-16384 is plenty for CT).")
    head_hidden_dim: int = _f(2048, "DINO head hidden width.")
    head_bottleneck_dim: int = _f(256, "DINO head bottleneck width.")
    head_nlayers: int = _f(3, "DINO head MLP layers.")
    norm_last_layer: bool = _f(
        True,
        "freeze the weight-norm gain of the last layer (DINO default; "
        "recommended for ViT-B, false can be better for ViT-S).",
    )
    momentum_teacher: float = _f(0.996, "base EMA momentum of the teacher, cosine-increased to 1.")
    warmup_teacher_temp: float = _f(0.04, "teacher temperature at the start.")
    teacher_temp: float = _f(0.07, "teacher temperature after warm-up (above 0.07 is unstable).")
    warmup_teacher_temp_epochs: int = _f(30, "epochs of linear teacher-temperature warm-up (<= epochs).")
    student_temp: float = _f(0.1, "student temperature.")
    center_momentum: float = _f(0.9, "EMA momentum of the teacher centre.")
    epochs: int = _f(100, "training epochs (paper: 150 on 914 patients).")
    batch_size: int = _f(64, "slices per step (per process).")
    lr: float = _f(0.0005, "peak learning rate for a batch of 256; scaled linearly by batch_size / 256.")
    min_lr: float = _f(1e-6, "learning rate at the end of the cosine decay.")
    warmup_epochs: int = _f(10, "epochs of linear learning-rate warm-up.")
    weight_decay: float = _f(0.04, "weight decay at the start (cosine schedule).")
    weight_decay_end: float = _f(0.4, "weight decay at the end.")
    clip_grad: float = _f(3.0, "per-parameter gradient norm clip (DINO's clip_gradients; 0 = off).")
    freeze_last_layer: int = _f(1, "epochs during which the head's last layer gets no update.")
    drop_path_rate: float = _f(0.1, "stochastic depth of the student.")
    multicrop: MultiCropConfig = _f(MultiCropConfig(), "global / local / guided crops.")
    augment: AugmentConfig = _f(AugmentConfig(), "medical augmentations applied to every crop.")
    data: DataConfig = _f(
        DataConfig(),
        "cases and split; DINO trains on the train split only (labelled and "
        "unlabelled), the val/test patients stay unseen.",
    )
    runtime: RuntimeConfig = _f(RuntimeConfig(), "device, precision, seed.")
    checkpoint_every: int = _f(1, "write a resumable checkpoint every n epochs (and always at the end).")


# ------------------------------------------------------------------------------------- classifier


@dataclass(frozen=True)
class ClassifierConfig:
    """Linear slice classifier on frozen DINO-LG features (paper §3.3)."""

    backbone: str = _f(
        "",
        "a finished `cacstream train dino` run folder (its teacher backbone is used, "
        "as DINO evaluates the teacher). Required.",
    )
    feature_mode: Literal["cls", "cls_avgpool", "last_blocks", "patch_max"] = _f(
        "cls",
        "cls: final [CLS] (paper); cls_avgpool: + mean patch token; last_blocks: [CLS] of the last "
        "n_last_blocks blocks (DINO linear eval); patch_max: the linear layer on every patch token, "
        "slice logit = the maximum (finetune only; with patch_loss_weight > 0 the patch labels train "
        "the served layer itself; recommended on CPU budgets, docs/models.md).",
    )
    n_last_blocks: int = _f(1, "blocks concatenated for feature_mode last_blocks (DINO: 4 for ViT-S).")
    avgpool: bool = _f(False, "last_blocks: also append the mean patch token of the last block.")
    maxpool: bool = _f(
        False,
        "append the channel-wise max over patch tokens of each block read (not in the paper: a "
        "lesion is 1-2 of 196 patches, which averaging dilutes and the max keeps; recommended on CPU "
        "budgets where the [CLS] token alone is too weak).",
    )
    finetune: bool = _f(
        False,
        "also train the backbone (not in the paper, whose backbone stays frozen): the DINO-LG weights "
        "become the initialisation of a supervised slice filter. Costs a backbone forward+backward per "
        "slice per epoch; use when the frozen features cannot reach the target sensitivity/specificity.",
    )
    backbone_lr: float = _f(5e-5, "finetune: Adam learning rate of the backbone (the head uses lr).")
    patch_loss_weight: float = _f(
        0.0,
        "finetune only: weight of an auxiliary per-patch loss, a linear layer on every last-block patch "
        "token predicting 'this patch holds labelled calcium' (label guidance at patch level: 196 "
        "targets per slice instead of one). Not served. 1.0 is recommended when the DINO-LG budget is "
        "small; 0 = the slice loss alone.",
    )
    patch_pos_weight: float = _f(20.0, "BCE positive weight of the per-patch loss (~1-3 of 196 patches hold calcium).")
    input_window_hu: list[float] = _f(
        [],
        "finetune only: serve and train the filter on a fixed HU window [low, high] instead of the "
        "backbone's per-slice min-max (a window such as [-200, 800] gives 130-400 HU calcium ~5x the "
        "input contrast that min-max over air..bone leaves it). Empty = the backbone's preprocessing.",
    )
    input_size: int = _f(
        0,
        "finetune only: side of the served filter input; 0 = the DINO run's input size. With "
        "input_pool > 1 the backbone is rebuilt at input_size / input_pool (position embeddings "
        "resampled) and loaded with the DINO-LG weights.",
    )
    input_pool: int = _f(
        1,
        "finetune only: a fixed input_pool x input_pool max-pool in front of the ViT, part of the "
        "served graph. 4 with input_size 512 lets a ViT-Tiny/16 see 128² slices in which no "
        "calcification loses contrast (a bilinear resize to 224² averages small lesions below "
        "130 HU; docs/models.md). Recommended on CPU budgets: 64 patch tokens instead of 196.",
    )
    candidate_gate: bool = _f(
        False,
        "patch_max only: train and serve the filter gated by calcium candidates (engine/inference/"
        "candidates.py): only patches holding a 2D component >= 130 HU and >= 1 mm² (the Agatston "
        "lesion rule) can flag a slice, so the slice logit is the maximum over those patches and the "
        "patch loss covers them only; the threshold is chosen with the gate and config.json records it. "
        "Cannot change a score (no lesion lies outside a candidate); recommended: it spends the layer "
        "on the hard patches (bone, aortic and valve calcium, noise clusters) instead of empty tissue.",
    )
    init_from: str = _f(
        "",
        "finetune only: a finished `cacstream train classifier` run with the same read-out whose "
        "backbone and linear layer start this run (a fresh optimizer and threshold); empty = the DINO "
        "backbone and a new linear layer.",
    )
    hflip_p: float = _f(
        0.0,
        "finetune without augment: probability of flipping a training slice left-right (its patch "
        "targets flip with it). 0.5 is recommended when the training set is small.",
    )
    standardize: bool = _f(
        False,
        "train the linear layer on features standardised with the training split's mean / std, then "
        "fold both into the layer's weight and bias (the served model is still one linear layer on the "
        "raw features); makes Adam's step size fit concatenated read-outs of different scales.",
    )
    epochs: int = _f(10, "maximum epochs (paper: 10).")
    batch_size: int = _f(64, "slices per step (paper: 64).")
    lr: float = _f(1e-4, "Adam learning rate (paper: 1e-4).")
    weight_decay: float = _f(1e-4, "Adam weight decay (paper: 1e-4).")
    pos_weight: float = _f(
        0.0,
        "positive-class weight of the BCE; 0 = n_negative / n_positive of the "
        "training split (the paper's 9.0 for 10 % positives).",
    )
    patience: int = _f(3, "early stopping: epochs without a better validation F1 (paper: 3).")
    target_sensitivity: float = _f(
        0.98,
        "operating threshold = the highest one whose validation "
        "sensitivity reaches this; a missed calcified slice is a missed lesion, "
        "a false positive only costs segmenter time.",
    )
    augment: bool = _f(
        False,
        "random resized crops + flips on training slices (paper); false = features "
        "computed once and cached (much cheaper on a CPU).",
    )
    crop_scale: list[float] = _f([0.6, 1.0], "augment: area range of the random resized crop.")
    data: DataConfig = _f(DataConfig(), "labelled cases only; must be the same patient split as DINO's.")
    runtime: RuntimeConfig = _f(RuntimeConfig(), "device, precision, seed.")


# ------------------------------------------------------------------------------------------- U-Net


@dataclass(frozen=True)
class UNetConfig:
    """Per-artery calcium segmenter (paper §3.4, Table 5)."""

    arch: str = _f("unet_small", "segmenter from the model registry (unet_base = the paper's 64 filters).")
    arch_kwargs: dict[str, Any] = _f({}, "overrides (base_filters, depth, norm).")
    preprocess: PreprocessConfig = _f(
        PreprocessConfig(input_size=512),
        "HU → model input; input_size 512 "
        "keeps the native pixel grid of standard CT, where a 1 mm² lesion is "
        "2-4 pixels (down-sampling would erase it).",
    )
    train_crop: int = _f(
        256,
        "train on random square patches of this side (0 = whole slices); the "
        "network is fully convolutional and serves whole slices.",
    )
    positive_crop_p: float = _f(
        0.8, "probability that a training patch of a calcified slice contains a calcium pixel."
    )
    negative_fraction: float = _f(
        0.25,
        "calcium-free slices added per calcified slice (teaches 'bone is not "
        "coronary'); 0 = calcified slices only.",
    )
    hard_negative_crop_p: float = _f(
        0.0,
        "probability that a patch not centred on coronary calcium is centred on a random non-coronary "
        "calcium component instead (aortic wall, valves, bone; each component equally likely). The "
        "engine's regions put the U-Net exactly on such calcium; 0.5 recommended when fine-tuning.",
    )
    epochs: int = _f(100, "training epochs (paper: 100).")
    batch_size: int = _f(16, "patches per step (paper: 64 whole slices on GPUs).")
    lr: float = _f(1e-4, "Adam learning rate (paper: 1e-4).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_epochs: int = _f(1, "linear learning-rate warm-up epochs, then cosine to min_lr.")
    min_lr: float = _f(1e-6, "learning rate at the end.")
    dice_weight: float = _f(1.0, "weight of the soft Dice term (over artery classes present in the batch).")
    ce_weight: float = _f(1.0, "weight of the cross-entropy term.")
    ce_class_weights: list[float] = _f(
        [],
        "per-class CE weights [bg, LM, LAD, LCX, RCA]; empty = from "
        "training-set pixel frequencies, (f_bg / f_c)^0.5 capped at 100.",
    )
    loss_on_candidates: bool = _f(
        False,
        "compute the loss (and validation Dice) only on calcium candidates, pixels >= "
        "preprocess.calcium_threshold_hu (needs a 'window' preprocess). Scoring only ever reads the "
        "labels there (lesion = HU >= 130 inside the artery labels), so the other ~99 % of pixels only "
        "dilute the gradient; recommended on small budgets (not in the paper).",
    )
    hflip_p: float = _f(0.0, "horizontal flip probability; keep 0: artery identity depends on left/right.")
    intensity_jitter: float = _f(0.1, "brightness/contrast factor range ±x on training patches.")
    patience: int = _f(0, "early stopping on validation mean Dice (0 = off).")
    init_from: str = _f(
        "",
        "a finished `cacstream train unet` run folder whose model initialises this run (same arch); "
        "the optimizer and the learning-rate schedule start fresh. Use it to train a finished run "
        "longer (--resume only continues an interrupted one with its own schedule).",
    )
    data: DataConfig = _f(DataConfig(), "labelled cases; same patient split as the other stages.")
    runtime: RuntimeConfig = _f(RuntimeConfig(), "device, precision, seed.")


StageConfig = Union[DinoConfig, ClassifierConfig, UNetConfig]
STAGES: dict[str, type] = {"dino": DinoConfig, "classifier": ClassifierConfig, "unet": UNetConfig}

T = TypeVar("T")


# ----------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert (lists → tuples for PreprocessConfig)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table/object, got {type(value).__name__}")
        if tp is PreprocessConfig:
            try:
                return PreprocessConfig.from_dict(value)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: {e}") from None
        return _build(tp, value, where)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for alt in get_args(tp):
            try:
                return _convert(value, alt, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {[_type_name(a) for a in get_args(tp)]}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp,) = get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table/object, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kw = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def config_from_dict(stage: str, data: dict[str, Any], source: str = "<dict>") -> StageConfig:
    """Build and validate the ``stage`` config from plain data; errors name ``source`` and the key."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {sorted(STAGES)}")
    try:
        cfg = _build(STAGES[stage], data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    problems = validate_config(cfg)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return cfg  # type: ignore[return-value]


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a JSON (.json) or TOML (.toml) file into plain data, with a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        if path.suffix.lower() == ".toml":
            with path.open("rb") as fh:
                return tomllib.load(fh)
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: the top level must be an object")
            return data
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from None
    raise ConfigError(f"{path}: config files must end in .json or .toml")


def load_config(stage: str, path: Path) -> StageConfig:
    """Read and validate a stage config file; relative data paths are resolved against its folder."""
    path = Path(path)
    cfg = config_from_dict(stage, read_config_file(path), str(path))
    return resolve_paths(cfg, path.parent)


def resolve_paths(cfg: T, base: Path) -> T:
    """Make relative source paths / cache dirs / backbone run absolute, relative to ``base``."""

    def fix(p: str) -> str:
        return p if not p or Path(p).is_absolute() else str((base / p).resolve())

    data: DataConfig = cfg.data  # type: ignore[attr-defined]
    sources = [dataclasses.replace(s, path=fix(s.path), cache_dir=fix(s.cache_dir)) for s in data.sources]
    out = dataclasses.replace(cfg, data=dataclasses.replace(data, sources=sources))  # type: ignore[type-var]
    if isinstance(out, ClassifierConfig):
        out = dataclasses.replace(out, backbone=fix(out.backbone), init_from=fix(out.init_from))
    if isinstance(out, UNetConfig) and out.init_from:
        out = dataclasses.replace(out, init_from=fix(out.init_from))
    return out  # type: ignore[return-value]


def validate_config(cfg: Any) -> list[str]:
    """Cross-field checks the dataclass types cannot express; returns human-readable problems."""
    p: list[str] = []

    def frac(name: str, v: float) -> None:
        if not 0.0 <= v <= 1.0:
            p.append(f"{name} must be in [0, 1], got {v}")

    def pair(name: str, v: list[float], lo: float = 0.0, hi: float = 1.0) -> None:
        if len(v) != 2 or not lo <= v[0] <= v[1] <= hi:
            p.append(f"{name} must be [low, high] with {lo} <= low <= high <= {hi}, got {v}")

    data: DataConfig = cfg.data
    if not data.sources:
        p.append("data.sources is empty: give at least one source")
    for i, s in enumerate(data.sources):
        if s.kind in ("npz", "case_dir", "coca", "mask_folder") and not s.path:
            p.append(f"data.sources[{i}].path is required for kind {s.kind!r}")
        if s.kind == "phantom" and (len(s.seeds) != 2 or s.seeds[1] < 1):
            p.append(f"data.sources[{i}].seeds must be [first_seed, count >= 1] for phantoms")
    sp = data.split
    frac("data.split.val_fraction", sp.val_fraction)
    frac("data.split.test_fraction", sp.test_fraction)
    if sp.val_fraction + sp.test_fraction >= 1.0:
        p.append("data.split: val_fraction + test_fraction must leave patients for training")
    if (sp.train or sp.val or sp.test) and not sp.train:
        p.append("data.split: explicit lists need at least `train`")
    if data.slice_stride < 1:
        p.append(f"data.slice_stride must be >= 1, got {data.slice_stride}")
    rt: RuntimeConfig = cfg.runtime
    if rt.precision not in ("fp32", "bf16", "fp16"):
        p.append(f"runtime.precision must be fp32, bf16 or fp16, got {rt.precision!r}")
    if isinstance(cfg, DinoConfig):
        mc, au = cfg.multicrop, cfg.augment
        pair("multicrop.global_crops_scale", mc.global_crops_scale)
        pair("multicrop.local_crops_scale", mc.local_crops_scale)
        if mc.rlc < 0 or mc.glc < 0:
            p.append("multicrop.rlc and multicrop.glc must be >= 0")
        frac("multicrop.guided_jitter", mc.guided_jitter)
        for name in (
            "hflip_p",
            "vflip_p",
            "jitter_p",
            "blur_p_global1",
            "blur_p_global2",
            "blur_p_local",
            "sharpness_p",
            "noise_p",
        ):
            frac(f"augment.{name}", getattr(au, name))
        pair("augment.blur_sigma", au.blur_sigma, 1e-3, 10.0)
        if cfg.epochs < 1 or cfg.batch_size < 1:
            p.append("epochs and batch_size must be >= 1")
        if cfg.warmup_teacher_temp_epochs > cfg.epochs:
            p.append(
                f"warmup_teacher_temp_epochs ({cfg.warmup_teacher_temp_epochs}) exceeds epochs ({cfg.epochs})"
            )
        if cfg.warmup_epochs > cfg.epochs:
            p.append(f"warmup_epochs ({cfg.warmup_epochs}) exceeds epochs ({cfg.epochs})")
        if cfg.out_dim < 2:
            p.append("out_dim must be >= 2")
        if not 0.0 < cfg.momentum_teacher <= 1.0:
            p.append("momentum_teacher must be in (0, 1]")
    if isinstance(cfg, ClassifierConfig):
        if not cfg.backbone:
            p.append("backbone (a `cacstream train dino` run folder) is required")
        if cfg.feature_mode == "patch_max" and (not cfg.finetune or cfg.maxpool or cfg.avgpool or cfg.augment):
            p.append("feature_mode patch_max needs finetune = true, augment = false, maxpool = avgpool = false")
        if cfg.feature_mode != "last_blocks" and cfg.n_last_blocks != 1:
            p.append("n_last_blocks only applies to feature_mode 'last_blocks'")
        if cfg.patch_loss_weight < 0 or (cfg.patch_loss_weight > 0 and (not cfg.finetune or cfg.augment)):
            p.append("patch_loss_weight needs finetune = true and augment = false (and must be >= 0)")
        if cfg.input_window_hu and (not cfg.finetune or len(cfg.input_window_hu) != 2
                                    or cfg.input_window_hu[1] <= cfg.input_window_hu[0]):
            p.append("input_window_hu needs finetune = true and two values [low, high] with high > low")
        if (cfg.input_size or cfg.input_pool != 1 or cfg.hflip_p) and not cfg.finetune:
            p.append("input_size, input_pool and hflip_p need finetune = true (the backbone is rebuilt)")
        if cfg.input_pool < 1 or (cfg.input_size and cfg.input_size % cfg.input_pool):
            p.append(f"input_pool must be >= 1 and divide input_size, got {cfg.input_pool} and {cfg.input_size}")
        if cfg.candidate_gate and cfg.feature_mode != "patch_max":
            p.append("candidate_gate gates patch logits: it needs feature_mode patch_max")
        if cfg.init_from and not cfg.finetune:
            p.append("init_from starts from a fine-tuned filter: it needs finetune = true")
        frac("hflip_p", cfg.hflip_p)
        if cfg.standardize and (cfg.augment or cfg.finetune):
            p.append("standardize needs cached frozen features (augment = false, finetune = false)")
        frac("target_sensitivity", cfg.target_sensitivity)
        pair("crop_scale", cfg.crop_scale, 0.01, 1.0)
        if cfg.pos_weight < 0:
            p.append("pos_weight must be >= 0 (0 = from class frequency)")
        if cfg.epochs < 1 or cfg.batch_size < 1:
            p.append("epochs and batch_size must be >= 1")
    if isinstance(cfg, UNetConfig):
        if cfg.ce_class_weights and len(cfg.ce_class_weights) != 5:
            p.append("ce_class_weights needs 5 values [bg, LM, LAD, LCX, RCA] or none")
        frac("positive_crop_p", cfg.positive_crop_p)
        frac("hard_negative_crop_p", cfg.hard_negative_crop_p)
        if cfg.hard_negative_crop_p and cfg.preprocess.normalisation != "window":
            p.append("hard_negative_crop_p needs preprocess.normalisation = 'window'")
        frac("hflip_p", cfg.hflip_p)
        if cfg.train_crop < 0 or cfg.train_crop > cfg.preprocess.input_size:
            p.append(f"train_crop must be in [0, input_size={cfg.preprocess.input_size}]")
        if cfg.negative_fraction < 0:
            p.append("negative_fraction must be >= 0")
        if cfg.epochs < 1 or cfg.batch_size < 1:
            p.append("epochs and batch_size must be >= 1")
        if cfg.warmup_epochs > cfg.epochs:
            p.append(f"warmup_epochs ({cfg.warmup_epochs}) exceeds epochs ({cfg.epochs})")
        if cfg.loss_on_candidates and cfg.preprocess.normalisation != "window":
            p.append("loss_on_candidates needs preprocess.normalisation = 'window' (a fixed HU -> input map)")
    return p


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able data of a config (PreprocessConfig through its own to_dict)."""
    if isinstance(cfg, PreprocessConfig):
        return cfg.to_dict()
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]  # type: ignore[return-value]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def describe_config(cls: type, indent: str = "") -> str:
    """Every field of a config class with its default and documentation (for --show-config)."""
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    default_obj = cls()
    for f in dataclasses.fields(cls):
        value = getattr(default_obj, f.name)
        help_text = f.metadata.get("help", "")
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and tp is not PreprocessConfig:
            lines.append(f"{indent}[{f.name}]  {help_text}")
            lines.append(describe_config(tp, indent + "    "))
            continue
        shown = json.dumps(config_to_dict(value))
        lines.append(f"{indent}{f.name} = {shown}")
        if help_text:
            lines.append(f"{indent}    # {help_text}")
        if tp is PreprocessConfig:
            lines.append(
                f"{indent}    # keys: normalisation (minmax|window), window_hu, input_size, "
                "output_dtype, calcium_threshold_hu, body_threshold_hu (kernels/config.py)"
            )
    return "\n".join(lines)
