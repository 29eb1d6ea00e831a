"""Run profiles: one YAML per profile in ``configs/``, keyed by pipeline step, validated on load.

A profile may say ``extends: <other profile>`` and then hold only its differences (merged key by
key). Unknown keys and wrong types are errors that name the key, never silent defaults.
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from liverlesion.contract import SVM_C_GRID as C_GRID
from liverlesion.contract import SVM_GAMMA_GRID as GAMMA_GRID
from liverlesion.phantom import CohortSpec
from liverlesion.protocol import MONITORS, TRAINING_PRECISIONS, Protocol
from liverlesion.segmentation import SegmentSettings
from liverlesion.segnet import CascadeSettings
from liverlesion.validation import ValidationRules
from liverlesion.zoo import TABLE2_MODELS, model_entry


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(_Section):
    """``ingest``: what a case that breaks the data contract does to the run."""

    on_bad_case: Literal["stop", "quarantine"] = Field(
        "stop",
        description="stop: the run stops before training, naming every bad case; quarantine: bad cases "
        "are set aside, listed in the run's quarantine report, and the run goes on",
    )


class PatchConfig(_Section):
    """``extract_patches``: the paper's three orthogonal patches."""

    margin_mm: float = Field(4.0, ge=0, description="added around the lesion bounding box on each side")
    square_pixels: bool = Field(True, description="reformat planes in true proportions (False: raw voxel grid)")
    canvas: tuple[int, int] = Field((252, 210), description="padded size (rows, cols), the paper's 252x210")
    output_size: tuple[int, int] | None = Field(None, description="network input (rows, cols); None = canvas")

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.output_size or self.canvas)


class SplitConfig(_Section):
    """``split``: patient-level, label-stratified, seeded."""

    seed: int = 2019
    val_fraction: float = Field(0.2, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)


_P = Protocol  # the training protocol's defaults are written once, in liverlesion.protocol


class TrainConfig(_Section):
    """``train``: a backbone + the paper's head (FC-512, Dropout 0.4, FC-512, Dropout 0.4, softmax), the
    training protocol (``protocol.Protocol``'s fields, with its defaults), and where it computes."""

    backbone: Literal["inception_v3", "inception_resnet_v2"] = "inception_v3"
    weights: str | None = Field(None, description="None (random init, offline), 'imagenet' or a weights file path")
    dense_units: int = Field(512, ge=1)
    dropout: float = Field(0.4, ge=0, lt=1)
    bn_momentum: float | None = Field(
        None, gt=0, lt=1, description="batch-norm moving-average momentum; None = Keras's 0.99"
    )
    backend: Literal["tensorflow", "jax", "torch"] | None = Field(
        None,
        description="the Keras backend the run loads (sets KERAS_BACKEND); None: KERAS_BACKEND or Keras's "
        "default, TensorFlow. jax with the jax-cuda extra trains on a GPU",
    )
    precision: Literal[TRAINING_PRECISIONS] = Field(
        "float32",
        description="float32, mixed_float16 or mixed_bfloat16 (Keras mixed precision: float32 weights), "
        "or auto: mixed_bfloat16 on an accelerator, float32 on a CPU. The registered model "
        "is float32 whatever it was trained in",
    )
    epochs: int = Field(_P.epochs, ge=1)
    batch_size: int = Field(_P.batch_size, ge=1)
    learning_rate: float = Field(_P.learning_rate, gt=0)
    lr_patience: int | None = Field(
        _P.lr_patience, ge=1, description="epochs without val-accuracy gain before the rate is cut"
    )
    lr_factor: float = Field(_P.lr_factor, gt=0, lt=1)
    min_lr: float = Field(_P.min_lr, ge=0)
    early_stopping_patience: int | None = Field(
        _P.early_stopping_patience, ge=1, description="None: no early stop (best weights kept)"
    )
    augment: bool = _P.augment
    rotation_deg: float = Field(_P.rotation_deg, ge=0, le=180)
    shift_px: int = Field(_P.shift_px, ge=0)
    flips: bool = _P.flips
    label_smoothing: float = Field(_P.label_smoothing, ge=0, lt=1)
    seed: int = _P.seed
    monitor: Literal[MONITORS] = Field(
        _P.monitor,
        description="what chooses the kept epoch, cuts the rate and stops early (the paper: "
        "val_accuracy, which on a few dozen validation lesions often ties)",
    )
    tie_break: Literal["first", "last"] = Field(
        _P.tie_break, description="among epochs that tie on the monitor, keep the first (Keras, the paper) or the last"
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        _P.lr_schedule, description="constant (cut only by lr_patience) or a cosine decay to 0 over the epochs"
    )
    full_batches: bool = Field(
        _P.full_batches,
        description="top the train set up to whole batches, validate in one batch (one compiled step on JAX)",
    )

    def protocol(self) -> Protocol:
        """The training protocol these settings describe."""
        return Protocol(**{f.name: getattr(self, f.name) for f in fields(Protocol)})

    @model_validator(mode="after")
    def _one_rate_policy(self) -> TrainConfig:
        if self.lr_schedule == "cosine" and self.lr_patience is not None:
            raise ValueError("lr_schedule cosine sets the rate of every step: set lr_patience to null")
        return self


class CompareConfig(_Section):
    """``compare`` (``liverlesion compare``): the models of the paper's Table 2, trained side by side.

    The CNNs take every setting of ``train`` except the backbone and the weights, which each model
    fixes (``liverlesion.zoo``). IPW models read ImageNet weights from ``imagenet_weights`` (a file
    per backbone) or else from the Keras cache, ``$KERAS_HOME/models/``.
    """

    models: tuple[str, ...] = Field(
        tuple(TABLE2_MODELS), min_length=1, description="keys of liverlesion.zoo.TABLE2_MODELS"
    )
    imagenet_weights: dict[Literal["inception_v3", "inception_resnet_v2"], str] = Field(
        default_factory=dict, description="backbone -> weights file (no top); default: the Keras cache"
    )
    svm_c_grid: tuple[float, ...] = Field(C_GRID, min_length=1)
    svm_gamma_grid: tuple[float, ...] = Field(GAMMA_GRID, min_length=1)

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in models if m not in TABLE2_MODELS]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; choose from {list(TABLE2_MODELS)}")
        if len(set(models)) != len(models):
            raise ValueError(f"a model is listed twice: {list(models)}")
        return models

    def train_config(self, key: str, base: TrainConfig) -> TrainConfig:
        """``base`` with the backbone and weights of CNN ``key``."""
        entry = model_entry(key)
        if entry.kind != "cnn":
            raise ValueError(f"{key} is not a CNN")
        weights = self.imagenet_weights.get(entry.backbone, "imagenet") if entry.pretrained else None
        return base.model_copy(update={"backbone": entry.backbone, "weights": weights})

    def initialisation(self, key: str, base: TrainConfig) -> str:
        """What model ``key`` starts from, in words for the report (so an IPW row names its weights)."""
        if model_entry(key).kind == "texture_svm":
            return "texture features, RBF SVM tuned on the validation split"
        weights = self.train_config(key, base).weights
        if weights is None:
            return "random initial weights (NPW)"
        return "ImageNet weights from the Keras cache" if weights == "imagenet" else f"initial weights from {weights}"


class EvaluateConfig(_Section):
    threshold: float = Field(
        0.5, gt=0, lt=1, description="metastasis probability above which a lesion is called metastasis"
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="scoring: float32 as trained, or the CPU fast path (BN folded, bfloat16; "
        "liverlesion.inference), which gave the same metrics on the default test split; "
        "auto: the fast path where the CPU has bfloat16 units, else float32",
    )


Metric = Literal["accuracy", "balanced_accuracy", "f1", "roc_auc", "precision", "recall", "specificity"]


class GateConfig(_Section):
    """``register.gate``: when a newly trained version replaces the champion.

    Both are scored by their registered artefacts on the same lesions: the challenger's test split
    (the champion re-scored on it), or ``evaluation_cohort`` when set. The challenger must pass
    every floor, then beat the champion's ``primary_metric`` by more than ``min_margin``.
    """

    primary_metric: Metric = "roc_auc"
    min_margin: float = Field(0.0, ge=0, lt=1, description="the challenger must beat the champion by more than this")
    floors: dict[Metric, float] = Field(
        default_factory=dict,
        description="metric -> lowest value a champion may have (recall is the sensitivity to metastases)",
    )
    evaluation_cohort: str | None = Field(
        None,
        description="a pinned cohort folder (cases.csv + lesion_types.csv) "
        "both models are scored on, instead of the test split",
    )

    @field_validator("floors")
    @classmethod
    def _floors_are_fractions(cls, floors: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in floors.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"floors are fractions in [0, 1]: {bad}")
        return floors


class RegisterConfig(_Section):
    """``register``: the MLflow registered model and its promotion gate."""

    model_name: str = "liver-lesion-classifier"
    gate: GateConfig = GateConfig()
    experiment: str = "liver-lesion-classification"


#: the profile sections a trained model depends on (its fingerprint); the others (name, description,
#: register, compare) change where a model is filed or what is compared, not the model
TRAINING_SECTIONS = ("cohort", "ingest", "segment", "patches", "validation", "split", "train", "evaluate")


# the section named after the `register` step shadows ABCMeta.register on the class; harmless
warnings.filterwarnings("ignore", message='Field name "register" in "Profile" shadows', category=UserWarning)


class Profile(_Section):
    """A whole pipeline run profile."""

    name: str
    description: str = ""
    cohort: CohortSpec = CohortSpec()
    ingest: IngestConfig = IngestConfig()
    segment: SegmentSettings = SegmentSettings()
    segmenter: CascadeSettings = CascadeSettings()  # the learned cascade (`liverlesion train-segmenter`)
    segment_experiment: str = "liver-lesion-segmentation"
    patches: PatchConfig = PatchConfig()
    validation: ValidationRules = ValidationRules()
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register: RegisterConfig = RegisterConfig()
    compare: CompareConfig = CompareConfig()

    @model_validator(mode="after")
    def _patch_shape_follows_patches(self) -> Profile:
        shape = self.validation.patch_shape
        if shape is not None and tuple(shape) != self.patches.size:
            raise ValueError(f"validation.patch_shape {tuple(shape)} differs from the patch size {self.patches.size}")
        return self

    def validation_rules(self) -> ValidationRules:
        """The rules ``validate`` applies to this profile's lesions.

        The class balance bounds describe the cohort: they hold for reference masks. An automatic
        segmentation finds some lesions and misses others (small cysts first), so the balance of what
        it found is an outcome, reported per class by ``evaluate_segmentation``, not a property of the
        data to stop on; its lesions are checked against every other rule.
        """
        if not self.segment.automatic:
            return self.validation
        return self.validation.model_copy(update={"min_metastasis_fraction": 0.0, "max_metastasis_fraction": 1.0})

    def training_settings(self) -> dict[str, Any]:
        """The settings a trained model depends on (``TRAINING_SECTIONS``), as JSON."""
        return self.model_dump(mode="json", include=set(TRAINING_SECTIONS))


class ConfigError(ValueError):
    """A profile that cannot be loaded; the message names the file and the key."""


def configs_dir() -> Path:
    from liverlesion.paths import project_root

    return project_root() / "configs"


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle through {[p.name for p in seen]}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a profile is a mapping of step names to settings, found {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    parent_path = path.parent / f"{parent}.yaml"
    if not parent_path.exists():
        raise ConfigError(f"{path}: extends '{parent}', but {parent_path} does not exist")
    base = _read_yaml(parent_path, (*seen, path))
    base.pop("name", None)
    base.pop("description", None)
    return _deep_merge(base, raw)


def load_profile(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Profile:
    """Load and validate a run profile.

    Args:
        name_or_path: a profile name in ``configs/`` (``quick``, ``paper``) or a YAML path.
        overrides: nested settings merged over the file (e.g. from the command line or a test).

    Raises:
        ConfigError: missing file, bad YAML, unknown key or wrong type; the message names the
            file and every offending key (``train.epochs: Input should be a valid integer``).
    """
    path = Path(name_or_path)
    if path.suffix not in {".yaml", ".yml"}:
        path = configs_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.exists() else []
        raise ConfigError(f"no profile {str(name_or_path)!r} ({path}); available: {', '.join(available) or 'none'}")
    raw = _read_yaml(path.resolve())
    raw.setdefault("name", path.stem)
    if overrides:
        raw = _deep_merge(raw, overrides)
    try:
        return Profile.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<profile>'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{path}: {problems}") from None
