"""The typed config schema: every key of every section, its type and its default, in one place.

Hydra composes ``configs/`` on top of :class:`TrainConfig` (registered as ``gn_detect_train_schema``
in :mod:`gn_detect.config.store`), so an unknown key or a value of the wrong type fails at
composition. Choices and cross-field rules are checked by :func:`gn_detect.config.validate`
before any data is read. YAML files only state what differs from these defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

# Allowed values of the string-valued keys (checked by config.validate, listed in errors).
CHOICES: dict[str, tuple[str, ...]] = {
    "model.norm_opts.impl": ("auto", "torch", "triton"),
    "model.head.act": ("relu", "none", "pn_relu"),
    "model.input.format": ("RGB", "BGR"),
    "model.fpn.top_block_in": ("p5", "c5"),
    "model.anchors.style": ("exact", "torchvision", "detectron"),
    "model.test.clip": ("before_nms", "after_nms"),
    "model.weights_classes": ("auto", "match", "reinit"),
    "model.loss.box_loss": ("smooth_l1", "giou"),
    "model.loss.normalizer": ("ema", "batch"),
    "data.name": ("shapes", "coco"),
    "data.decode": ("tensor", "pil"),
    "solver.lr_schedule": ("step", "cosine"),
    "solver.amp": ("auto", "bf16", "fp16", "off"),
    "solver.channels_last": ("auto", "on", "off"),
    "solver.nonfinite": ("stop", "skip"),
    "eval.tune": ("half", "same"),
    "eval.criterion": ("f1", "precision", "recall"),
    "eval.level": ("label", "box"),
    "eval.backend": ("faster_coco_eval", "pycocotools"),
    "log.progress": ("auto", "bar", "log"),
}

# eval.criterion -> the key of its target (f1 has none); evaluation/thresholds.py and validate.py read it
CRITERION_TARGETS: dict[str, str] = {"precision": "target_precision", "recall": "target_recall"}


@dataclass
class NormOpts:
    """Norm options for the whole model (``model.norm_opts``)."""

    num_groups: int = 32                 # GN groups G (gn, gn_ws); ln is G=1, in is G=C
    eps: float = 1e-5
    bn_group_size: Optional[int] = None  # images per BN statistics group (null: the device batch)
    impl: str = "auto"                   # GroupNorm kernel: auto (triton on CUDA), torch, triton


@dataclass
class NormOverrides:
    """Per-component norm options (``model.<part>.norm_opts``); null inherits ``model.norm_opts``."""

    num_groups: Optional[int] = None
    eps: Optional[float] = None
    bn_group_size: Optional[int] = None
    impl: Optional[str] = None


@dataclass
class BackboneConfig:
    name: str = "resnet"                 # a registered backbone (gn_detect/modeling/registry.py)
    depth: str = "50"                    # tiny, 18, 34, 50, 101, 152
    norm: str = "affine"
    ws: bool = False
    freeze_at: int = 2                   # 0: train all; 1: stem; 2: stem + res2 (Detectron)
    weights: Optional[str] = None        # torchvision/timm/Detectron/detectron2 file or a converted one (never downloaded)
    weights_strict: bool = True
    widths: Optional[List[int]] = None   # stage widths override (tiny models)
    stride_in_1x1: Optional[bool] = None  # stage stride in the 1x1 conv (MSRA); null: from the weights, else false
    groups: int = 1                      # ResNeXt cardinality (e.g. 32 for X-101-32x8d)
    width_per_group: int = 64            # ResNeXt width per group (e.g. 8 for X-101-32x8d)
    zero_init_residual: bool = False
    norm_opts: NormOverrides = field(default_factory=NormOverrides)


@dataclass
class FPNConfig:
    out_channels: int = 256
    norm: str = "none"
    ws: bool = False
    top_block_in: str = "p5"             # P6 from P5 (torchvision v1); c5: paper, detectron2, torchvision v2, Detectron
    relu_before_p7: bool = True          # P7 = conv(relu(P6)) as every source does; false: conv(P6)
    norm_opts: NormOverrides = field(default_factory=NormOverrides)


@dataclass
class HeadConfig:
    num_convs: int = 4
    norm: str = "none"
    ws: bool = False
    act: str = "relu"
    prior_prob: float = 0.01
    per_level_norm: Optional[bool] = None  # null: per level for bn/syncbn only (as detectron2)
    norm_opts: NormOverrides = field(default_factory=NormOverrides)


@dataclass
class AnchorsConfig:
    sizes: List[float] = field(default_factory=lambda: [32.0, 64.0, 128.0, 256.0, 512.0])
    strides: List[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    scales: List[float] = field(default_factory=lambda: [1.0, 2 ** (1 / 3), 2 ** (2 / 3)])
    ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    offset: float = 0.0                  # anchor centres at (i + offset) * stride; 0.0 as torchvision/detectron2
    style: str = "exact"                 # exact: sizes as given; torchvision: its integer sizes, rounded
                                         # corners, stride = padded size // grid; detectron: Detectron's
                                         # generate_anchors, rounded (modeling/anchors.py)


@dataclass
class LossConfig:
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    allow_low_quality_matches: bool = True
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "smooth_l1"
    smooth_l1_beta: float = 0.1
    box_weight: float = 1.0
    normalizer: str = "ema"              # ema of the positive-anchor count, or the batch's
    normalizer_momentum: float = 0.9


@dataclass
class TestConfig:
    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    score_thresh_per_level: List[float] = field(default_factory=list)  # one per level; []: score_thresh
    clip: str = "before_nms"             # boxes clipped to the image before NMS (torchvision) or after (detectron2)


@dataclass
class InputConfig:
    """How the model turns 0-255 RGB images into the backbone's input; null: from the weights
    (gn_detect/checkpoint/conventions.py), else torchvision's."""

    format: Optional[str] = None         # RGB or BGR: channel order the backbone expects
    pixel_mean: Optional[List[float]] = None  # 0-255, in that channel order
    pixel_std: Optional[List[float]] = None


@dataclass
class ModelConfig:
    name: str = "retinanet_r50_fpn"
    input: InputConfig = field(default_factory=InputConfig)
    norm_opts: NormOpts = field(default_factory=NormOpts)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorsConfig = field(default_factory=AnchorsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    test: TestConfig = field(default_factory=TestConfig)
    size_divisibility: Optional[int] = None  # input padding multiple; null: the deepest anchor stride
    weights: Optional[str] = None        # a whole-detector file to start from (torchvision, gn-detect; docs/weights.md)
    weights_classes: str = "auto"        # its class rows: auto (match by name, else re-init), match, reinit


@dataclass
class SplitConfig:
    images: str = "???"                  # image folder, relative to data.root
    ann: str = "???"                     # COCO instances json, relative to data.root


@dataclass
class SyntheticConfig:
    num_train: int = 300
    num_val: int = 100
    image_size: int = 256
    seed: int = 0
    num_classes: int = 5
    image_format: str = "jpg"
    max_objects: int = 6
    min_radius: float = 0.035            # shape radii, log-uniform, as fractions of the short side
    max_radius: float = 0.3
    clutter: float = 1.0                 # distractor lines/dots and pixel noise (0: plain gradient)
    class_colours: bool = False          # each class drawn in its own band of hues (colour is a cue too)


@dataclass
class DataConfig:
    name: str = "coco"                   # coco: COCO-format files; shapes: generated synthetic data
    root: str = "???"
    train: SplitConfig = field(default_factory=lambda: SplitConfig(
        images="train2017", ann="annotations/instances_train2017.json"))
    val: SplitConfig = field(default_factory=lambda: SplitConfig(
        images="val2017", ann="annotations/instances_val2017.json"))
    min_size_train: List[int] = field(default_factory=lambda: [800])
    max_size_train: Optional[int] = None  # null: max_size
    min_size_test: int = 800
    max_size: int = 1333
    flip_prob: float = 0.5
    filter_empty: bool = True
    verify_images: bool = True
    decode: str = "tensor"               # tensor: torchvision.io decode + uint8 resize; pil: PIL + float resize
    classes: Optional[List[str]] = None  # category names to keep (others' boxes dropped, counted); null: all
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    ims_per_device: int = 2
    aspect_grouping: bool = True
    num_workers: int = 1


@dataclass
class PreciseBNConfig:
    enabled: bool = False
    num_iter: int = 200                  # training batches whose statistics replace the running ones


@dataclass
class SolverConfig:
    ims_per_batch: Optional[int] = None  # images per step over all processes; null: ims_per_device x world
    base_lr: float = 0.01
    scale_lr: bool = False               # lr = base_lr * ims_per_batch / reference_batch
    reference_batch: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    clip_grad_norm: Optional[float] = None
    amp: str = "auto"                    # auto: bf16 on CUDA, fp32 on CPU
    channels_last: str = "auto"          # auto: on CUDA only
    nonfinite: str = "stop"              # stop: save state and raise; skip: drop the step
    max_skipped_steps: Optional[int] = None  # skip: stop beyond this many in a row; null: max(10, 1% of max_iter)
    compile: bool = False                # torch.compile of backbone, FPN and head
    max_iter: int = 1000
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    lr_schedule: str = "step"            # step or cosine
    steps: List[int] = field(default_factory=list)             # LR drops, in iterations
    step_fractions: List[float] = field(default_factory=list)  # or as fractions of max_iter
    gamma: float = 0.1
    precise_bn: PreciseBNConfig = field(default_factory=PreciseBNConfig)


@dataclass
class ClassCriterion:
    """One class's threshold criterion, ``eval.class_criteria.<class name>`` (evaluation/thresholds.py)."""

    criterion: str = "f1"                # f1 | precision (lowest thr with precision >= target) | recall
    target_precision: Optional[float] = None
    target_recall: Optional[float] = None  # recall: the most precise threshold with recall >= this floor


@dataclass
class EvalConfig:
    split: str = "val"
    period: int = 0                      # evaluate every N iterations (0: only at the end)
    ims_per_device: int = 2
    tune: str = "half"                   # half: tune on a seeded half, report on the other; same
    tune_seed: int = 0
    criterion: str = "f1"
    target_precision: Optional[float] = None
    target_recall: Optional[float] = None
    # {class name: {criterion, target_precision, target_recall}}: those classes' own criterion
    class_criteria: Dict[str, ClassCriterion] = field(default_factory=dict)
    level: str = "label"
    iou_threshold: float = 0.5
    max_dets: int = 100
    backend: str = "faster_coco_eval"     # pycocotools' numbers, faster (evaluation/coco_eval.py)
    num_vis_images: int = 4
    full_reports: bool = False           # figures at periodic evaluations too


@dataclass
class CheckpointConfig:
    period: int = 200                    # iterations between last.pth saves


@dataclass
class LogConfig:
    period: int = 20
    progress: str = "auto"               # auto: a bar on a terminal, log lines otherwise


@dataclass
class NormPresetConfig:
    name: str = "custom"                 # set by configs/norm/<preset>.yaml; a label for reports


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"                 # auto: cuda:<local rank> when available, else cpu
    dist_backend: Optional[str] = None   # null: nccl on GPU, gloo on CPU
    resume: bool = True                  # continue from <run dir>/checkpoints/last.pth
    init_weights: Optional[str] = None   # a gn-detect checkpoint initializing a fresh run
    sweep_name: str = "default"
    norm: NormPresetConfig = field(default_factory=NormPresetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


NORM_OPT_KEYS: tuple[str, ...] = tuple(NormOpts.__dataclass_fields__)


@dataclass
class EvalOverrides:
    """tools/evaluate.py's ``eval.*``: null keeps the run's own setting (see EvalConfig)."""

    split: Optional[str] = None
    tune: Optional[str] = None
    tune_seed: Optional[int] = None
    criterion: Optional[str] = None
    target_precision: Optional[float] = None
    target_recall: Optional[float] = None
    class_criteria: Optional[Dict[str, ClassCriterion]] = None
    level: Optional[str] = None
    iou_threshold: Optional[float] = None
    max_dets: Optional[int] = None
    backend: Optional[str] = None
    ims_per_device: Optional[int] = None
    num_vis_images: Optional[int] = None


@dataclass
class EvaluateConfig:
    checkpoint: Optional[str] = None     # <run>/checkpoints/model_final.pth (required)
    run_config: Optional[str] = None     # null: <checkpoint folder>/../config.yaml
    out_dir: Optional[str] = None        # null: <run folder>/evaluate/<time>
    device: str = "auto"
    data: Optional[DataConfig] = None    # null: the run's own data section
    eval: EvalOverrides = field(default_factory=EvalOverrides)
