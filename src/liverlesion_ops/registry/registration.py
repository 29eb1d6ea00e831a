"""Registering a trained model: the served model logged in its training run, a version with every lineage
tag at once, and the incomplete registrations a failed run can leave (never served, removed later)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import urllib.parse
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

import liverlesion
from liverlesion.calibration import Calibration
from liverlesion.predict import RESULT_COLUMNS
from liverlesion.promotion import DECIMALS
from liverlesion_ops import project
from liverlesion_ops.registry.locks import process_gone, process_id
from liverlesion_ops.registry.store import (
    CALIBRATION_TAG,
    CHAMPION,
    METRIC_TAG_PREFIX,
    THRESHOLD_TAG,
    RegistryError,
    aliases,
    check_version,
    registry_client,
)
from liverlesion_ops.tracking import server_problem

log = logging.getLogger(__name__)

#: the served model, logged "from code" (its file, never imported here: it registers itself with MLflow)
SERVED_MODEL_MODULE = "liverlesion_ops.lesion_classifier"
#: the name of the pyfunc model in the run (and what ``models:/<name>@champion`` loads)
PYFUNC_NAME = "lesion_classifier"


#: the serving environment: what the domain package's inference path imports, at the installed versions, and
#: TensorFlow's GPU-capable build (``tensorflow``, not ``tensorflow-cpu``, which a GPU server must not be pinned to)
SERVING_PACKAGES = ("keras", "numpy", "pandas", "scipy", "scikit-image", "nibabel", "edt")
TENSORFLOW_BUILDS = ("tensorflow-cpu", "tensorflow")


_RESULT_TYPES = {
    "instance": "long",
    "volume_ml": "double",
    "x_mm": "double",
    "y_mm": "double",
    "z_mm": "double",
    "p_metastasis": "double",
    "predicted": "long",
}


SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "image"),
            ColSpec("string", "mask"),
            ColSpec("string", "case_id", required=False),
            ColSpec("string", "mask_encoding", required=False),
        ]
    ),
    outputs=Schema([ColSpec(_RESULT_TYPES.get(c, "string"), c) for c in RESULT_COLUMNS]),
)


#: the tags of a registration still waiting for its gate decision (``register_and_gate``)
REGISTRATION_STATE, INCOMPLETE, COMPLETE = "registration_state", "incomplete", "complete"


REGISTRATION_OWNER, FINGERPRINT_PENDING = "registration_owner", "fingerprint_pending"


#: an incomplete registration made on another machine is taken as abandoned after this long (on this
#: machine: as soon as the process that registered it is gone)
STALE_REGISTRATION_S = 3600


#: the longest model-version description MLflow's SQL schema holds (varchar(5000): PostgreSQL and MySQL
#: refuse a longer one, SQLite does not check)
DESCRIPTION_LIMIT = 5000


def serving_requirements() -> list[str]:
    """Pinned requirements of the served model: the installed versions, TensorFlow's GPU-capable build (at the
    version of the TensorFlow installed here, if any: a model trained on JAX serves on any Keras backend)."""
    tensorflow = []
    for build in TENSORFLOW_BUILDS:
        try:
            tensorflow = [f"tensorflow=={installed_version(build)}"]
            break
        except PackageNotFoundError:
            continue
    return [*tensorflow, *(f"{name}=={installed_version(name)}" for name in SERVING_PACKAGES)]


def serving_settings(model_name: str, profile: dict[str, Any], scoring: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the served model needs besides the network: the profile's patch settings and scoring, and the
    calibration fitted on the validation split and the threshold chosen there (``scoring``: the evaluate step's
    ``calibration`` and ``threshold``; else none and the profile's ``evaluate.threshold``)."""
    return {
        "model_name": model_name,
        "patches": profile["patches"],
        "threshold": (scoring or {}).get("threshold", profile["evaluate"]["threshold"]),
        "precision": profile["evaluate"]["precision"],
        "calibration": Calibration.from_dict((scoring or {}).get("calibration")).to_dict(),
        "profile": profile["name"],
    }


def log_serving_model(
    network_file: Path, settings: dict[str, Any], card: dict[str, Any], card_markdown: str, model_id: str | None = None
) -> str:
    """Log the pyfunc that takes a CT and its lesion mask (``liverlesion_ops/lesion_classifier.py``) in the
    active run: the Keras network, the patch settings, threshold and registered version, the domain package as
    code, and the model card (``model_card.md`` and ``model_card.json`` among its artifacts).

    Args:
        network_file: the trained network as a native ``.keras`` file (what the train step's artifact holds),
            copied as it is: no Keras model is loaded to be saved again.
        model_id: the MLflow logged model to fill (one initialised, and registered, beforehand).

    Returns:
        The logged model's URI.
    """
    with tempfile.TemporaryDirectory(prefix="liverlesion-pyfunc-") as tmp:
        files = {
            "keras_model": Path(tmp) / "model.keras",
            "settings": Path(tmp) / "settings.json",
            "model_card": Path(tmp) / "model_card.md",
            "model_card_json": Path(tmp) / "model_card.json",
        }
        shutil.copyfile(network_file, files["keras_model"])
        files["settings"].write_text(json.dumps(settings, indent=2, sort_keys=True))
        files["model_card"].write_text(card_markdown, encoding="utf-8")
        files["model_card_json"].write_text(json.dumps(card, indent=2, sort_keys=True), encoding="utf-8")
        with warnings.catch_warnings():  # an input example would be a whole CT in base64: the signature says it
            warnings.filterwarnings("ignore", message=".*An input example was not provided")  # (colour codes first)
            info = mlflow.pyfunc.log_model(
                name=PYFUNC_NAME,
                python_model=str(project.module_path(SERVED_MODEL_MODULE)),
                artifacts={key: str(path) for key, path in files.items()},
                code_paths=[str(Path(liverlesion.__file__).parent)],
                signature=SIGNATURE,
                pip_requirements=serving_requirements(),
                model_id=model_id,
            )
        mlflow.log_artifact(str(files["model_card"]), artifact_path="model_card")
        mlflow.log_artifact(str(files["model_card_json"]), artifact_path="model_card")
    return info.model_uri


def version_of_run(mlflow_client: MlflowClient, name: str, run_id: str):
    """The version already registered from training run ``run_id`` (None if there is none)."""
    found = mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


@dataclass(frozen=True)
class Registered:
    version: str
    model_uri: str
    created: bool  # False: the training run had been registered before (a re-run of a cached model)


def register_version(
    network_file: Path,
    run_id: str,
    name: str,
    metrics: dict[str, float],
    lineage: dict[str, str],
    profile: dict[str, Any],
    card: dict[str, Any],
    card_markdown: str,
    incomplete: bool = False,
    scoring: dict[str, Any] | None = None,
) -> Registered:
    """Log the served model (the network in ``network_file``, a ``.keras`` file) in training run ``run_id`` and
    register it with every lineage and metric tag.

    Idempotent per training run: if ``run_id`` already has a version, that version is returned; if that
    version is an incomplete registration whose registering process is gone, it is taken over (and
    returned as created, to be gated again). With ``incomplete``, the version is registered as
    incomplete (``registration_state``), its ``fingerprint`` held back until a decision completes it.
    ``scoring`` (the evaluate step's ``calibration`` and ``threshold``) goes into the served model and the
    version's ``calibration`` and ``decision_threshold`` tags.
    """
    mlflow_client = registry_client()
    existing = version_of_run(mlflow_client, name, run_id)
    if existing is not None:
        if not (incomplete and incomplete_registration(existing) and _abandoned_registration(existing)):
            return Registered(str(existing.version), existing.source, created=False)
        mlflow_client.set_model_version_tag(name, existing.version, REGISTRATION_OWNER, process_id())
        mlflow_client.update_model_version(name, existing.version, description=version_description(card_markdown))
        log.info(f"took over the incomplete registration v{existing.version} of run {run_id}")
        return Registered(str(existing.version), existing.source, created=True)
    tags = {**lineage, **{METRIC_TAG_PREFIX + k: f"{v:.{DECIMALS}f}" for k, v in metrics.items()}}
    served = serving_settings(name, profile, scoring)
    tags[CALIBRATION_TAG] = json.dumps(served["calibration"], sort_keys=True)
    tags[THRESHOLD_TAG] = f"{served['threshold']:.6g}"
    if incomplete:
        tags.update({REGISTRATION_STATE: INCOMPLETE, REGISTRATION_OWNER: process_id()})
        if "fingerprint" in tags:  # what `retrain` looks for: only once the version is complete
            tags[FINGERPRINT_PENDING] = tags.pop("fingerprint")
    # the version is registered before the served model is written into it, so that the model knows its own
    # version: every answer it gives, served over HTTP too, names the version that gave it
    with mlflow.start_run(run_id=run_id):
        logged = mlflow.initialize_logged_model(name=PYFUNC_NAME, source_run_id=run_id)
    version = mlflow.register_model(f"models:/{logged.model_id}", name, tags=tags)
    try:
        settings = {**served, "model_version": str(version.version)}
        with mlflow.start_run(run_id=run_id):
            model_uri = log_serving_model(network_file, settings, card, card_markdown, model_id=logged.model_id)
        mlflow_client.update_model_version(name, version.version, description=version_description(card_markdown))
    except BaseException:
        _delete_or_leave(mlflow_client, name, str(version.version))
        raise
    return Registered(str(version.version), model_uri, created=True)


def version_description(
    card_markdown: str,
    where: str = "`model_card.md` beside the served model and in the training run's `model_card/` artifacts",
) -> str:
    """The model card as a version's description: whole if it fits ``DESCRIPTION_LIMIT``, else its first
    sections (``## ``) that fit, and a line naming the others and ``where`` the whole card is."""
    if len(card_markdown) <= DESCRIPTION_LIMIT:
        return card_markdown
    head, *sections = card_markdown.split("\n## ")
    kept, dropped = head, []
    for section in sections:
        title = section.split("\n", 1)[0]
        if dropped or len(kept) + len(section) + 4 > DESCRIPTION_LIMIT - 400:
            dropped.append(title)
        else:
            kept += "\n## " + section
    note = f"\n\n*Shortened to fit the registry ({', '.join(dropped)} left out): the whole card is {where}.*\n"
    return kept[: DESCRIPTION_LIMIT - len(note)] + note


def incomplete_registration(model_version) -> bool:
    """Whether a version is a registration still waiting for (or abandoned before) its gate decision."""
    return (model_version.tags or {}).get(REGISTRATION_STATE) == INCOMPLETE


def _abandoned_registration(model_version) -> bool:
    """Whether the process that registered an incomplete version is gone (on another machine: after
    ``STALE_REGISTRATION_S``)."""
    gone = process_gone((model_version.tags or {}).get(REGISTRATION_OWNER, ""))
    if gone is None:
        return time.time() - int(model_version.creation_timestamp) / 1000 > STALE_REGISTRATION_S
    return gone


def _delete_or_leave(mlflow_client: MlflowClient, name: str, version: str) -> None:
    """Delete a version whose registration failed; if even that fails, say what is left and why it is harmless."""
    try:
        mlflow_client.delete_model_version(name, version)
    except Exception:  # the tracking server went away: the original error is what matters
        _left_behind(name, version)


def discard_failed(mlflow_client: MlflowClient, name: str, version: str) -> None:
    """After a failed gate: delete the new version if it is still incomplete and no alias names it (a version
    is complete before any alias names it); if the tracking server cannot be asked, leave it."""
    try:
        found = mlflow_client.get_model_version(name, version)
        if not incomplete_registration(found) or version in aliases(mlflow_client, name).values():
            return
    except Exception:
        _left_behind(name, version)
        return
    _delete_or_leave(mlflow_client, name, version)


def _left_behind(name: str, version: str) -> None:
    log.info(
        f"could not delete the failed registration v{version} of {name} (the tracking store cannot be "
        f"reached); it stays marked {REGISTRATION_STATE}={INCOMPLETE}: never served nor promoted, and the next "
        "registry operation removes it",
    )


def check_servable(mlflow_client: MlflowClient, name: str, version: str) -> None:
    """Refuse an incomplete registration (``predict``, ``promote``).

    Raises:
        RegistryError: naming the version and why.
    """
    found = check_version(mlflow_client, name, version)
    if incomplete_registration(found):
        raise RegistryError(
            f"{name} v{version} is an incomplete registration (its run failed before the gate "
            "decided on it): it is not served or promoted, and the next registry operation removes it"
        )


def sweep_incomplete(mlflow_client: MlflowClient, name: str) -> list[str]:
    """Delete the incomplete registrations of ``name`` whose registering process is gone (under the lock).

    Returns:
        The versions deleted.
    """
    try:
        named = set(aliases(mlflow_client, name).values())
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":  # no such model yet
            return []
        raise
    removed = []
    for found in mlflow_client.search_model_versions(f"name='{name}' and tags.{REGISTRATION_STATE}='{INCOMPLETE}'"):
        if str(found.version) not in named and _abandoned_registration(found):
            mlflow_client.delete_model_version(name, str(found.version))
            removed.append(str(found.version))
    return removed


def local_model_files(name: str, version: str) -> tuple[Path, Path] | None:
    """The settings and network files of a version where the registry keeps them as files on this machine (a local
    store); None where they must be fetched (a tracking server, S3), or the version's model is not this project's
    pyfunc (no such artifacts)."""
    import yaml
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    registry_client()  # the project's tracking store, as every registry read
    location = ModelsArtifactRepository.get_underlying_uri(f"models:/{name}/{version}")
    if not location.startswith("file:"):
        return None
    folder = Path(urllib.parse.unquote(urllib.parse.urlparse(location).path))
    try:
        flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
        files = flavor["artifacts"]["settings"]["path"], flavor["artifacts"]["keras_model"]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    settings, network = (folder / path for path in files)
    return (settings, network) if settings.is_file() and network.is_file() else None


def load_registered_predictor(name: str, version: str):
    """The served model of a version (its predictor), named by its model name and version: what ``predict``,
    ``predict-batch`` and the gate score with.

    Where the registry's files are on this machine the predictor is made from them directly
    (``liverlesion.predict.load_predictor``, which the pyfunc's ``load_context`` calls too): the same network,
    settings and code, without loading the pyfunc (its requirement check and code loading, ~1 s of a cold
    ``predict``), and the network made ready for scoring is kept in ``project.scoring_cache_dir()`` for the next
    process (~1.3 s). Elsewhere the pyfunc is loaded as ``mlflow models serve`` loads it.
    """
    local = local_model_files(name, version)
    if local is not None:
        from liverlesion_ops.registry.lookup import Found, predictor_from_files

        return predictor_from_files(Found(name, str(version), *local))
    predictor = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model().predictor
    predictor.model_name, predictor.model_version = name, str(version)
    return predictor


def servable_version(name: str, version: str | None, alias: str = CHAMPION) -> str:
    """Version ``version`` of model ``name`` (a number, ``v3`` too), or the one ``alias`` names when None.

    Raises:
        RegistryError: no such model, version or alias, or an incomplete registration.
    """
    mlflow_client = registry_client()
    if version is None:
        try:
            version = str(mlflow_client.get_model_version_by_alias(name, alias).version)
        except MlflowException as err:
            if server_problem(err) is not None:
                raise
            raise RegistryError(
                f"no model models:/{name}@{alias} (`liverlesion run` registers one; `liverlesion models` lists "
                "the versions)"
            ) from None
    version = str(version).removeprefix("v")
    check_servable(mlflow_client, name, version)
    return version
