"""The training configuration: one YAML file per run, validated before anything is built.

Pure data: nothing here imports models, data or losses, so every layer above can read it.
The task name is checked where tasks live (``avatarkd.tasks.make_task``), the losses against the
loss registry (``config.distill``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, PrivateAttr, model_validator

from .base import Strict
from .distill import DistillerConfig
from .yamlio import apply_overrides, load_yaml, validate


class NormalizeConfig(Strict):
    """Per-channel input statistics: the model sees ``(image - mean) / std`` of images in [0, 1]."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length_positive_std(self) -> NormalizeConfig:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


FACTORY_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


class ModelConfig(Strict):
    """A built-in model (``arch`` + ``backbone``) or any ``nn.Module`` (``factory`` + ``kwargs``).

    See ``avatarkd.models``.

    ``arch``: segmentation ``fcn``/``deeplabv3``/``lraspp``; detection ``retinanet``/``fcos``/
    ``fasterrcnn``; classification ``classifier``. ``backbone``: any torchvision classification
    model name, or ``timm:<name>``. ``weights`` (whole model) and ``backbone_weights`` (feature
    extractor only, into ``backbone_module``): a local file in any common layout or
    ``torchvision:<EnumClass>.<NAME>`` from the hub cache under ``TORCH_HOME`` (nothing is
    downloaded: third-party factories are built offline); a file that needs unpickling is refused
    unless ``allow_pickle: true`` says it is trusted. ``output_key``: where the logits are in a
    dict / ``ModelOutput``. ``normalize``: the model's input
    normalisation; default ImageNet statistics when pretrained weights are used (a torchvision
    enum, or ``backbone_weights``), what an avatarkd export's ``student.json`` recorded for its
    ``weights``, else none.
    """

    arch: str | None = Field(None, description="built-in model; or give 'factory'")
    backbone: str = Field("resnet18", description="torchvision classification model name, or timm:<name>")
    factory: str | None = Field(
        None, pattern=FACTORY_PATTERN, description="'package.module:callable' returning an nn.Module"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")
    weights: str | None = Field(None, description="whole-model weights: a file or torchvision:<EnumClass>.<NAME>")
    backbone_weights: str | None = Field(
        None, description="feature-extractor weights: a file or torchvision:<EnumClass>.<NAME>"
    )
    allow_pickle: bool = Field(
        False,
        description="load weights files that need unpickling (a whole pickled nn.Module); unpickling can run "
        "code from the file, so set it only for files you trust",
    )
    normalize: Literal["imagenet", "none"] | NormalizeConfig | None = None
    output_key: str | None = Field(
        None,
        description="the item of the model's output (dict key or attribute) holding the task's logits; "
        "default 'out', or 'logits' when the output has that and no 'out' (Hugging Face)",
    )
    backbone_module: str | None = Field(
        None,
        description="module path that backbone_weights load into, e.g. 'encoder' (smp); default: "
        "backbone.body, else backbone, else encoder, else the model as a classifier",
    )
    output_stride: Literal[8, 16, 32] | None = Field(None, description="segmentation; default 16 for lraspp, else 8")
    fpn_channels: int = Field(256, ge=8)
    image_size: int = Field(128, ge=16)
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    freeze_bn: bool = Field(False, description="keep BatchNorm statistics fixed while training (small batches)")
    bn_momentum: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="momentum of every BatchNorm's running statistics (default: the model's "
        "own; torchvision's MobileNetV3 uses 0.01, too slow for a schedule of a few hundred steps)",
    )
    # the folder of the YAML file that named this model: a factory's module is also looked up there
    _config_dir: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _arch_or_factory(self) -> ModelConfig:
        if (self.arch is None) == (self.factory is None):
            raise ValueError(
                "give either 'arch' (a built-in model) or 'factory' ('package.module:callable'), not "
                + ("both" if self.arch else "neither")
            )
        if self.kwargs and self.factory is None:
            raise ValueError("'kwargs' are the factory's arguments; they need 'factory'")
        return self

    @property
    def config_dir(self) -> Path | None:
        return self._config_dir


DataFormat = Literal["folders", "cityscapes", "voc", "ade20k", "coco", "imagefolder"]
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
Split = Literal["train", "val", "test"]


def _pair(value: Any) -> Any:
    """``512`` -> ``(512, 512)``: a square size may be written as one number."""
    return (value, value) if isinstance(value, int) and not isinstance(value, bool) else value


def _listed(value: Any) -> Any:
    """``800`` -> ``[800]``: one size or a list of sizes."""
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


Size = Annotated[tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]], BeforeValidator(_pair)]


class DataConfig(Strict):
    """Where the data is, in which layout, and how training images are augmented.

    ``format`` picks the reader (``avatarkd.data.open_dataset``): ``folders`` (avatarkd's own layout:
    ``{split}/images``, ``{split}/masks``, ``{split}/annotations.json``, ``classify/{split}/<class>/``),
    ``cityscapes``, ``voc``, ``ade20k``, ``coco`` or ``imagefolder`` (their published layouts under
    ``root``). ``root: null`` with no explicit path means the bundled Fashion-MNIST canvases;
    explicit paths (``train_images``, ...) override the layout of the ``folders``/``coco`` formats.
    Sizes are ``[height, width]`` (one number for a square); ``base_size`` is an aspect-preserving
    fit (the long edge to the larger number, the short edge to the smaller, whichever is tighter).
    """

    format: DataFormat = "folders"
    root: Path | None = None
    train_images: Path | None = None
    val_images: Path | None = None
    train_masks: Path | None = None
    val_masks: Path | None = None
    train_annotations: Path | None = None
    val_annotations: Path | None = None
    ignore_index: int = Field(255, ge=0)
    num_classes: int | None = Field(
        None,
        ge=2,
        description="segmentation: classes incl. background; default: "
        "from the format, data.class_names, the annotations or a scan of the masks",
    )
    class_names: list[str] | None = Field(None, min_length=1, description="names shown in metrics and pictures")
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    crop_size: Size | None = Field(
        None,
        description="segmentation/classification: random crops of this size "
        "(padded with 0 / ignore where the image is smaller)",
    )
    scale_range: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = Field(
        None, description="segmentation: random rescale by a ratio in this range (of base_size, else of the image)"
    )
    base_size: Size | None = Field(
        None, description="segmentation: the size scale_range is relative to, e.g. [1024, 2048] for Cityscapes"
    )
    photometric: bool = Field(False, description="segmentation: random brightness, contrast, saturation and hue")
    min_size: Annotated[list[Annotated[int, Field(ge=8)]], BeforeValidator(_listed)] | None = Field(
        None,
        description="detection: shorter side after resizing; a list trains multi-scale (one drawn per "
        "batch) and evaluates at its last value; default: model.image_size",
    )
    max_size: int | None = Field(None, ge=8, description="detection: longer side limit (default: the largest min_size)")
    skip_unreadable: bool = Field(
        False,
        description="skip images that cannot be decoded, and masks or annotations whose size disagrees with "
        "their image (counted and logged), instead of stopping",
    )
    check_samples: int = Field(
        200,
        ge=0,
        description="images per split the pre-flight check reads at the start "
        "of training (0: no check); `avatarkd check-data --all` reads every image",
    )
    batch_size: int = Field(16, ge=1)
    val_batch_size: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)
    limit_train: int | None = Field(None, ge=1, description="use only the first N training samples")
    limit_val: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.scale_range is not None and self.scale_range[0] > self.scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with low <= high, got {list(self.scale_range)}")
        if self.num_classes is not None and self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names given for num_classes {self.num_classes}")
        if self.min_size is not None and not self.min_size:
            raise ValueError("min_size: give at least one size")
        return self

    def min_sizes(self) -> tuple[int, ...] | None:
        """``min_size`` as a tuple (the form torchvision's detection transform takes)."""
        return tuple(self.min_size) if self.min_size is not None else None


class EvalConfig(Strict):
    """How the evaluation split is run: which split, and for segmentation whole-image or sliding-window.

    Segmentation is evaluated at each image's original resolution: ``resize`` (optional, the same
    aspect-preserving fit as ``data.base_size``) rescales the input and the logits are resized back
    to the label size; ``slide`` runs ``crop_size`` windows every ``stride`` pixels and averages the
    overlapping logits (default stride: two thirds of the window).
    """

    split: Literal["val", "test"] = "val"
    mode: Literal["whole", "slide"] = "whole"
    crop_size: Size | None = None
    stride: Size | None = None
    resize: Size | None = None

    @model_validator(mode="after")
    def _slide_needs_a_window(self) -> EvalConfig:
        if self.mode == "slide" and self.crop_size is None:
            raise ValueError("mode slide needs crop_size: [height, width] (and optionally stride)")
        return self

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(crop, stride) of the sliding window."""
        assert self.crop_size is not None
        stride = self.stride or (max(1, self.crop_size[0] * 2 // 3), max(1, self.crop_size[1] * 2 // 3))
        return self.crop_size, stride


class OptimConfig(Strict):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(10.0, gt=0)


class TrainLoopConfig(Strict):
    steps: int = Field(200, ge=1)
    log_every: int = Field(10, ge=1)
    eval_every: int | None = Field(None, ge=1, description="default: only at the end")
    checkpoint_every: int = Field(100, ge=1)
    keep_last: int = Field(2, ge=1)
    amp: Literal["off", "bf16", "fp16"] = "off"
    device: str = "auto"
    sync_bn: bool = Field(True, description="SyncBatchNorm under multi-GPU DDP (CUDA only)")
    plots: bool = True


class TrainConfig(Strict):
    task: str = Field(description="segmentation | detection | classification (see avatarkd.tasks.TASKS)")
    seed: int = 0
    output_dir: Path = Path("runs/default")
    data: DataConfig = Field(default_factory=DataConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    model: ModelConfig
    teacher: ModelConfig | None = None
    distill: DistillerConfig | None = None
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)

    @model_validator(mode="after")
    def _teacher_for_distillation(self) -> TrainConfig:
        if self.distill is not None and self.teacher is None:
            raise ValueError("distill needs a teacher: add a 'teacher:' section with its weights")
        if self.teacher is not None and self.teacher.weights is None:
            raise ValueError(
                "teacher.weights: a distillation teacher must be trained; give its checkpoint path "
                "or torchvision:<EnumClass>.<NAME>"
            )
        return self


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    data: dict[str, Any] = load_yaml(path)
    apply_overrides(data, overrides or [])
    cfg = validate(TrainConfig, data, str(path))
    for model in (cfg.model, cfg.teacher):  # model.factory modules may sit beside the YAML file
        if model is not None:
            model._config_dir = Path(path).resolve().parent
    return cfg
