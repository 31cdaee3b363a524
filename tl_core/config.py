"""RunConfig: everything that defines one training run, as plain data."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

AUGMENTATIONS = ("none", "light", "crop", "strong")  # what each does: tl_core/data/augment.py PRESETS
SCHEDULES = ("cosine", "onecycle")
BN_POLICIES = ("eval", "frozen_eval", "train")  # what each means: tl_core/models/layers.py
DEVICES = ("auto", "cpu", "cuda", "mps")
LR_BY_PLAN = {"head": 1e-3, "partial": 3e-4, "all": 1e-4}
# When layers train, the head is first fitted on frozen features for this many epochs (milliseconds each),
# before the epochs the user set: a fine-tune then starts from a good head (tl_core/fit/loop.py).
PROBE_EPOCHS_BEFORE_FINETUNE = 5
FEATURES = ("last", "multi-layer")  # what the head reads: tl_core/models/multilayer.py
HEADS = ("logistic", "prototype")
CLASS_WEIGHTS = ("auto", "on", "off")  # weighting of the loss by 1/class count: tl_core/fit/imbalance.py  # how the probe fits the head: tl_core/fit/probe.py, tl_core/fit/prototypes.py
# Domain adaptation to a run's target images (tl_core/adapt.py); one sentence each on when it helps.
ADAPT_HELP = {
    "none": "train as usual; target images, when given, are only measured",
    "adabn": "BatchNorm statistics re-estimated on the target images (no labels, one forward pass): helps when "
             "the target differs in lighting, contrast, polarity or colour; works with feature extraction",
    "align": "the target's features moved to the source's mean and spread, folded into the head: the cheapest, "
             "works with cached features, helps when the shift moves every feature alike",
    "dann": "fine-tuning with a domain classifier behind gradient reversal, so the features stop telling source "
            "from target: needs layers that train, for shifts the cheap methods do not undo",
    "auto": "the method the shift meter and a quick check favour (the surest predictions on the target "
            "images, no labels needed); none when the target looks like the source",
}
ADAPT_METHODS = tuple(ADAPT_HELP)
_FREEZE_RE = re.compile(r"^(head|all|top-\d+|[\w.\-]+(,[\w.\-]+)*)$")


def recommended_lr(freeze: str) -> float:
    """The peak learning rate of the group next to the head, for a freeze plan.

    The head alone (trained on images when augmented) takes a head's rate. Pretrained layers need
    smaller steps, the more of them train the smaller: measured on Fashion-MNIST (20 a class, mean of 3
    draws; bench/RESULTS.md), see LR_BY_PLAN.
    """
    if freeze in ("head", "auto"):  # auto: the plan kept sets its own rate
        return LR_BY_PLAN["head"]
    return LR_BY_PLAN["all"] if freeze == "all" else LR_BY_PLAN["partial"]


def _setting(default, kind: type, help: str, choices: tuple = ()):
    """A field the command line and the app expose: its default, type, help and choices live here only."""
    return field(default=default, metadata={"kind": kind, "help": help, "choices": choices})


def settings() -> dict[str, dataclasses.Field]:
    """The user-facing settings of a run (the fields made by _setting), by name."""
    return {f.name: f for f in dataclasses.fields(RunConfig) if "help" in f.metadata}


def defaults() -> dict:
    """Each setting's default value."""
    return {name: f.default for name, f in settings().items()}


class ConfigError(ValueError):
    """A setting a user gave is out of range; the message says which and why."""


@dataclass(frozen=True)
class RunConfig:
    """One run. `freeze` says which layer groups train:

    - "auto": the plan is measured on the images first (tl_core/plan/auto_plan.py), then trained;
    - "head": feature extraction, only the new classifier trains;
    - "top-N": the head and the N layer groups below it train;
    - "all": full fine-tune, every group trains;
    - "a,b,c": exactly these group names train (the head is always trained).
    """

    dataset_dir: str
    task: str = _setting("classify", str, "what the model learns: classify (a label per image), multitask (a "
                         "label per task of a labels table), anomaly (spot what differs from good images), detect "
                         "(boxes around objects); tl_core/kinds.py")
    val_dataset_dir: str | None = None
    target_dir: str | None = None  # unlabelled images of where the model will be used (an ingested dataset)
    target_test_dir: str | None = None  # labelled target images, used only to measure
    backbone: str = _setting("tf_efficientnet_lite0", str, "any timm model name (default tf_efficientnet_lite0, "
                             "EfficientNet-Lite0 with weights shipped with the app: works offline)")
    weights: str = "embedded"  # embedded | hub | none | path/to/file.safetensors (the CLI picks by backbone)
    freeze: str = _setting("auto", str, "auto | head | top-N | all | GROUP,GROUP: the layer groups that train "
                           "(auto: measured on your images within --auto-budget)")
    auto_budget: float = _setting(3.0, float, "the Auto plan's time, as a multiple of feature extraction's: "
                                  "fine-tuning candidates that would not fit are not measured")
    features: str = _setting("auto", str, "what the head reads: last (the backbone's pooled output), multi-layer "
                             "(every stage pooled), auto (validation picks; a fine-tune then starts from that head)",
                             ("auto", *FEATURES))
    head: str = _setting("auto", str, "the probe's head: logistic (regression), prototype (nearest class mean, "
                         "from one image a class), auto (prototypes for classes of 5 images or fewer)", ("auto", *HEADS))
    bn_policy: str = _setting("eval", str, "eval: every BatchNorm keeps its pretrained statistics (safe on small "
                              "data); frozen_eval: trained layers use batch statistics; train: all do", BN_POLICIES)
    epochs: int = _setting(10, int, "passes over the training images; when layers train, the head's "
                           f"{PROBE_EPOCHS_BEFORE_FINETUNE} probe epochs on frozen features come first, in addition")
    batch_size: int = _setting(32, int, "images per step")
    lr: float | None = _setting(None, float, "peak learning rate next to the head (default: by plan: head 1e-3, "
                                "top-N 3e-4, all 1e-4)")
    weight_decay: float = _setting(0.05, float, "AdamW weight decay")
    label_smoothing: float = _setting(0.1, float, "label smoothing of the training loss")
    class_weights: str = _setting("auto", str, "weight the training loss by 1/class count, so every class counts "
                                  "the same: on, off, or auto (on when the largest class has 3× the smallest's "
                                  "images or more)", CLASS_WEIGHTS)
    schedule: str = _setting("cosine", str, "learning-rate schedule after warm-up", SCHEDULES)
    warmup_epochs: float = _setting(1.0, float, "epochs of linear warm-up")
    augment: str = _setting("none", str, "augmentation of the training images: light (crops and flips), crop "
                            "(crops, no flips: for digits and text), strong (plus colour, shape, erasing)",
                            AUGMENTATIONS)
    image_size: int | None = _setting(None, int, "square input size in px (default: the backbone's own)")
    early_stopping: int = _setting(5, int, "epochs without a better validation loss before a phase stops; 0: never")
    val_fraction: float = _setting(0.2, float, "share of the images held out for validation (stratified)")
    device: str = _setting("auto", str, "where to train", DEVICES)
    seed: int = _setting(0, int, "seed of the split, the shuffles and the initialisation")
    probe_first: bool = _setting(True, bool, "fit the head on frozen features before unfreezing anything")
    name: str = _setting("", str, "a name to find the run again")
    adapt: str = _setting("none", str, "domain adaptation to the target images (--target-data): "
                          + "; ".join(f"{k}: {v.split(':')[0]}" for k, v in ADAPT_HELP.items()), ADAPT_METHODS)
    # Where a run comes from, and what it keeps of there (each read where it matters, named here once):
    parent_run: str | None = None  # the run this one was made from (a from-scratch baseline's pretrained twin)
    grown: bool = False  # the parent's model with new images or classes (tl_core/use/grow.py)
    retrained_from: str | None = None  # the run whose likely label errors were fixed (tl_core/quality/label_errors.py)
    task_weights: dict = field(default_factory=dict)  # a multi-task run's loss weight per task (default 1 each)
    only_task: str | None = None  # one task of a labels table, trained alone (tl_core/use/compare.py)
    separate_of: str | None = None  # the multi-task run that `only_task` run is compared with
    # A task kind's own settings, by name; the kind reads and checks them (an anomaly run's stages, say:
    # tl_core/anomaly/fit.py). The app's kind section sets them as st.session_state["<kind>_options"].
    kind_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.lr is None:
            object.__setattr__(self, "lr", recommended_lr(self.freeze))
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, message: str):
            if not ok:
                raise ConfigError(message)

        need(bool(self.dataset_dir), "dataset_dir: choose a dataset first")
        need(bool(self.backbone), "backbone: choose a backbone")
        need(_FREEZE_RE.match(self.freeze or "") is not None
             and (not self.freeze.startswith("top-") or self.freeze[4:].isdigit()),
             f"freeze: {self.freeze!r} is not one of head, all, top-N or a comma-separated list of group names")
        need(self.features in ("auto", *FEATURES),
             f"features: {self.features!r} is not one of auto, {', '.join(FEATURES)}")
        need(self.head in ("auto", *HEADS), f"head: {self.head!r} is not one of auto, {', '.join(HEADS)}")
        need(self.class_weights in CLASS_WEIGHTS,
             f"class_weights: {self.class_weights!r} is not one of {', '.join(CLASS_WEIGHTS)}")
        need(self.bn_policy in BN_POLICIES, f"bn_policy: {self.bn_policy!r} is not one of {', '.join(BN_POLICIES)}")
        need(1 <= self.auto_budget <= 100, f"auto_budget: {self.auto_budget} is outside 1..100")
        need(1 <= self.epochs <= 1000, f"epochs: {self.epochs} is outside 1..1000")
        need(1 <= self.batch_size <= 4096, f"batch_size: {self.batch_size} is outside 1..4096")
        need(0 < self.lr <= 1, f"lr: {self.lr} is outside (0, 1]")
        need(0 <= self.weight_decay <= 1, f"weight_decay: {self.weight_decay} is outside [0, 1]")
        need(0 <= self.label_smoothing < 1, f"label_smoothing: {self.label_smoothing} is outside [0, 1)")
        need(self.schedule in SCHEDULES, f"schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        need(0 <= self.warmup_epochs <= self.epochs, f"warmup_epochs: {self.warmup_epochs} is outside 0..epochs")
        need(self.augment in AUGMENTATIONS, f"augment: {self.augment!r} is not one of {', '.join(AUGMENTATIONS)}")
        need(self.image_size is None or 32 <= self.image_size <= 1024,
             f"image_size: {self.image_size} is outside 32..1024")
        need(self.early_stopping >= 0, f"early_stopping: {self.early_stopping} must be 0 (off) or more")
        need(0 < self.val_fraction < 1, f"val_fraction: {self.val_fraction} is outside (0, 1)")
        need(self.device in DEVICES, f"device: {self.device!r} is not one of {', '.join(DEVICES)}")
        need(self.adapt in ADAPT_METHODS, f"adapt: {self.adapt!r} is not one of {', '.join(ADAPT_METHODS)}")
        need(self.adapt in ("none", "auto") or bool(self.target_dir),
             f"adapt: {self.adapt} adapts to target images; give them (--target-data DIR) or choose none")
        need(self.adapt != "dann" or self.freeze != "head",
             "adapt: dann changes the features, so layers must train: choose freeze top-N or all, or adabn/align")

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def extra(self) -> dict:
        """The lineage fields that are set, by the names configs written before they were fields kept them under
        (their "extra" table)."""
        return {name: getattr(self, name) for name in _FORMERLY_EXTRA if getattr(self, name)}

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """A RunConfig from to_dict's table; a config written before the lineage fields existed keeps them in
        "extra" (a from-scratch baseline's twin as "baseline_of": its parent_run)."""
        data = dict(data)
        extra = dict(data.pop("extra", None) or {})
        if "baseline_of" in extra:
            baseline_of = extra.pop("baseline_of")
            if data.get("parent_run") is None:
                data["parent_run"] = baseline_of
        unknown_extra = sorted(set(extra) - set(_FORMERLY_EXTRA))
        if unknown_extra:
            raise ConfigError(f"unknown setting(s) in extra: {', '.join(unknown_extra)}")
        data = {**extra, **data}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))


_FORMERLY_EXTRA = ("grown", "retrained_from", "task_weights", "only_task", "separate_of")
