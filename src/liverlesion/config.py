"""Run profiles: one YAML per profile, keyed by pipeline step, validated on load into typed sections.

A profile is the one home of every value a run depends on. The sections below say each setting's
type, bounds and meaning, and hold no value: ``configs/base.yaml`` holds the values every profile
shares, and a profile (``quick``, ``paper``) says ``extends: base`` and holds only its differences
(merged key by key). A setting missing from the merged profile, an unknown key and a wrong type are
errors that name the key, never silent defaults.
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from liverlesion.calibration import CalibrationMethod
from liverlesion.phantom import CohortSpec
from liverlesion.protocol import MONITORS, TRAINING_PRECISIONS, Protocol
from liverlesion.segmentation import SegmentSettings
from liverlesion.segnet import CascadeSettings
from liverlesion.zoo import TABLE2_MODELS, model_entry


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidationRules(_Section):
    """``validation``: the thresholds of the data contract; everything else in it is fixed by the pipeline (the
    patch shape the tensor must have is the profile's patch size, ``PatchConfig.size``)."""

    min_metastasis_fraction: float = Field(ge=0, le=1, description="lowest share of metastases in the cohort")
    max_metastasis_fraction: float = Field(ge=0, le=1, description="highest share of metastases in the cohort")
    spacing_range_mm: tuple[float, float] = Field(description="voxel sizes a CT may have")
    hu_range: tuple[float, float] = Field(description="CT numbers a CT may hold")
    max_lesion_volume_ml: float = Field(gt=0, description="larger than any liver: a mask or spacing error")
    min_lesions: int = Field(ge=1, description="a split needs one lesion of each class at least")
    standardisation_tolerance: float = Field(gt=0, description="on |mean| and |std - 1| of each patch channel")

    @model_validator(mode="after")
    def _consistent(self) -> ValidationRules:
        if not self.min_metastasis_fraction <= self.max_metastasis_fraction:
            raise ValueError(
                "need min_metastasis_fraction <= max_metastasis_fraction, got "
                f"{self.min_metastasis_fraction} and {self.max_metastasis_fraction}"
            )
        for name in ("spacing_range_mm", "hu_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name}: the lower bound {lo} must be below the upper bound {hi}")
        return self


class IngestConfig(_Section):
    """``ingest``: what a case that breaks the data contract does to the run."""

    on_bad_case: Literal["stop", "quarantine"] = Field(
        description="stop: the run stops before training, naming every bad case; quarantine: bad cases "
        "are set aside, listed in the run's quarantine report, and the run goes on",
    )


class PatchConfig(_Section):
    """``patches``: the paper's three orthogonal patches (``liverlesion.patches``)."""

    margin_mm: float = Field(ge=0, description="added around the lesion bounding box on each side")
    square_pixels: bool = Field(description="reformat planes in true proportions (false: the raw voxel grid)")
    canvas: tuple[int, int] = Field(description="padded size (rows, cols); the paper's is 252x210")
    output_size: tuple[int, int] | None = Field(description="network input (rows, cols); null: the canvas")

    @property
    def size(self) -> tuple[int, int]:
        """The patch size the network sees (and validation expects)."""
        return tuple(self.output_size or self.canvas)


class SplitConfig(_Section):
    """``split``: patient-level, label-stratified, seeded."""

    seed: int
    val_fraction: float = Field(gt=0, lt=0.5)
    test_fraction: float = Field(gt=0, lt=0.5)


class TrainConfig(_Section):
    """``train``: a backbone + the paper's head (FC, dropout, FC, dropout, softmax), the training protocol
    (``protocol.Protocol``'s fields), and where it computes."""

    backbone: Literal["inception_v3", "inception_resnet_v2"]
    weights: str | None = Field(description="null (random init, offline), 'imagenet' or a weights file path")
    dense_units: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    bn_momentum: float | None = Field(gt=0, lt=1, description="batch-norm moving-average momentum; null: Keras's 0.99")
    backend: Literal["tensorflow", "jax", "torch"] | None = Field(
        description="the Keras backend the run loads (sets KERAS_BACKEND); null: KERAS_BACKEND or Keras's "
        "default, TensorFlow. jax with the jax-cuda extra trains on a GPU",
    )
    precision: Literal[TRAINING_PRECISIONS] = Field(
        description="float32, mixed_float16 or mixed_bfloat16 (Keras mixed precision: float32 weights), "
        "or auto: mixed_bfloat16 on an accelerator, float32 on a CPU. The registered model "
        "is float32 whatever it was trained in",
    )
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    lr_patience: int | None = Field(ge=1, description="epochs without a better monitor value before the rate is cut")
    lr_factor: float = Field(gt=0, lt=1)
    min_lr: float = Field(ge=0)
    early_stopping_patience: int | None = Field(ge=1, description="null: no early stop (best weights kept)")
    augment: bool
    rotation_deg: float = Field(ge=0, le=180)
    shift_px: int = Field(ge=0)
    flips: bool
    label_smoothing: float = Field(ge=0, lt=1)
    seed: int
    monitor: Literal[MONITORS] = Field(
        description="what chooses the kept epoch, cuts the rate and stops early (the paper: "
        "val_accuracy, which on a few dozen validation lesions often ties)",
    )
    tie_break: Literal["first", "last"] = Field(
        description="among epochs that tie on the monitor, keep the first (Keras, the paper) or the last"
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        description="constant (cut only by lr_patience) or a cosine decay to 0 over the epochs"
    )
    full_batches: bool = Field(
        description="top the train set up to whole batches, validate in one batch (one compiled step on JAX)",
    )
    run_eagerly: bool = Field(
        description="run each train and validation step op by op, untraced: on TensorFlow faster for a smoke run "
        "of a few steps (tracing the train step costs tens of seconds on a CPU), slower for a real one; on JAX "
        "slower than compiling even for a few steps",
    )

    def protocol(self) -> Protocol:
        """The training protocol these settings describe."""
        return Protocol(**{f.name: getattr(self, f.name) for f in fields(Protocol)})

    @model_validator(mode="after")
    def _one_rate_policy(self) -> TrainConfig:
        self.protocol()  # its own checks (one rate policy, a known monitor), in the profile's words
        return self


class CompareConfig(_Section):
    """``compare`` (``liverlesion compare``): the models of the paper's Table 2, trained side by side.

    The CNNs take every setting of ``train`` except the backbone and the weights, which each model
    fixes (``liverlesion.zoo``). IPW models read ImageNet weights from ``imagenet_weights`` (a file
    per backbone) or else from the Keras cache, ``$KERAS_HOME/models/``.
    """

    models: tuple[str, ...] = Field(min_length=1, description="keys of liverlesion.zoo.TABLE2_MODELS")
    imagenet_weights: dict[Literal["inception_v3", "inception_resnet_v2"], str] = Field(
        description="backbone -> weights file (no top); {}: the Keras cache"
    )
    svm_c_grid: tuple[float, ...] = Field(min_length=1, description="the texture SVM's C values, tried on validation")
    svm_gamma_grid: tuple[float, ...] = Field(min_length=1, description="its RBF gamma values")

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


class BootstrapConfig(_Section):
    """``evaluate.bootstrap``: the patient-level percentile intervals of every reported metric."""

    resamples: int = Field(ge=100, description="resamples of the test patients")
    confidence: float = Field(gt=0, lt=1, description="coverage of the two-sided interval")
    seed: int


class OperatingPointConfig(_Section):
    """``evaluate.operating_point``: the decision threshold chosen on the validation split for a target."""

    metric: Literal["recall", "specificity"] = Field(
        description="recall: the sensitivity to metastases (a missed metastasis costs more than a cyst sent to "
        "follow-up); specificity: to cysts"
    )
    at_least: float = Field(gt=0, le=1, description="the target the threshold must reach on the validation lesions")


class EvaluateConfig(_Section):
    """``evaluate``: how the held-out lesions are scored, and the decision threshold every answer uses."""

    threshold: float = Field(
        gt=0,
        lt=1,
        description="P(metastasis) at or above which a lesion is called metastasis, unless operating_point chooses it",
    )
    operating_point: OperatingPointConfig | None = Field(
        description="the threshold chosen on the validation lesions (calibrated) as the highest reaching this "
        "target, then used for the test metrics, carried with the registered model (predict, the served model, "
        "the gate's floors, Figure 5); null: threshold",
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        description="scoring: float32 as trained, or the CPU fast path (BN folded, bfloat16; "
        "liverlesion.precision), which gave the same metrics on the default test split; "
        "auto: the fast path where the CPU has bfloat16 units, else float32",
    )
    bootstrap: BootstrapConfig
    calibration: CalibrationMethod = Field(
        description="post-hoc calibration of P(metastasis), fitted on the validation split and carried with the "
        "registered model (liverlesion.calibration): temperature (one parameter; decisions at 0.5 and ROC AUC "
        "unchanged), platt (two; moves the decision at 0.5) or none",
    )
    diameter_bins_mm: tuple[float, ...] = Field(
        min_length=1, description="the breakdown by lesion diameter (mm, of the ball of its volume) splits at these"
    )
    spacing_bins_mm: tuple[float, ...] = Field(
        min_length=1, description="the breakdown by the CT's slice spacing (mm) splits at these"
    )
    gallery_lesions: int = Field(ge=0, le=100, description="the worst-scored test lesions the failure gallery shows")
    calibration_bins: int = Field(
        ge=2,
        le=50,
        description="equal-width bins of P(metastasis) for the expected calibration error and the reliability diagram",
    )

    @field_validator("diameter_bins_mm", "spacing_bins_mm")
    @classmethod
    def _increasing(cls, bins: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in zip(bins, bins[1:])) or bins[0] <= 0:
            raise ValueError("bins must be positive and increasing")
        return bins


Metric = Literal["accuracy", "balanced_accuracy", "f1", "roc_auc", "precision", "recall", "specificity"]


class GateConfig(_Section):
    """``register.gate``: when a newly trained version replaces the champion.

    Both are scored by their registered artefacts on the same lesions: the challenger's test split
    (the champion re-scored on it), or ``evaluation_cohort`` when set. The challenger must pass
    every floor, then beat the champion's ``primary_metric`` by more than ``min_margin``.
    """

    primary_metric: Metric
    min_margin: float = Field(ge=0, lt=1, description="the challenger must beat the champion by more than this")
    floors: dict[Metric, float] = Field(
        description="metric -> lowest value a champion may have (recall is the sensitivity to metastases)",
    )
    evaluation_cohort: str | None = Field(
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
    """``register``: the MLflow registered model, its experiment and its promotion gate."""

    model_name: str = Field(description="the registered model (what predict, serving and the registry commands name)")
    experiment: str = Field(description="the MLflow experiment of training, evaluation and decision runs")
    gate: GateConfig


#: the profile sections a trained model depends on (its fingerprint); the others (name, description,
#: register, compare, the segmenter's) change where a model is filed or what is compared, not the model
TRAINING_SECTIONS = ("cohort", "ingest", "segment", "patches", "validation", "split", "train", "evaluate")


# the section named after the `register` step shadows ABCMeta.register on the class; harmless
warnings.filterwarnings("ignore", message='Field name "register" in "Profile" shadows', category=UserWarning)


class Profile(_Section):
    """A whole pipeline run profile: every value a run depends on."""

    name: str
    description: str = ""  # what the profile is for, in words (not a setting: a profile need not say it)
    cohort: CohortSpec
    ingest: IngestConfig
    segment: SegmentSettings
    segmenter: CascadeSettings  # the learned cascade (`liverlesion train-segmenter`)
    segment_experiment: str  # the MLflow experiment of its training runs
    patches: PatchConfig
    validation: ValidationRules
    split: SplitConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    register: RegisterConfig = Field(...)  # required: a bare annotation would take ABCMeta.register as its default
    compare: CompareConfig

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


def load_profile(name_or_path: str | Path, configs: Path, overrides: dict[str, Any] | None = None) -> Profile:
    """Load and validate a run profile.

    Args:
        name_or_path: a profile name in ``configs`` (``quick``, ``paper``) or a YAML path.
        configs: the folder of the project's profiles (``configs/``).
        overrides: nested settings merged over the file (e.g. from the command line or a test).

    Raises:
        ConfigError: missing file, bad YAML, unknown key or wrong type; the message names the
            file and every offending key (``train.epochs: Input should be a valid integer``).
    """
    path = Path(name_or_path)
    if path.suffix not in {".yaml", ".yml"}:
        path = Path(configs) / f"{name_or_path}.yaml"
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
