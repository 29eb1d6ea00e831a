"""The MLflow model registry: versions, the aliases that say where they stand, and every decision.

Aliases: ``champion`` (what ``predict`` and serving load), ``challenger`` (the latest version that
passed the floors but not the margin), ``previous_champion`` (the champion before the current one:
what ``rollback`` returns to).

A version is registered with every lineage tag at once (idempotent per training run: a cached model
re-registered by a re-run step gets no second version). Decisions (the gate's, a manual promotion,
a rollback) are taken under a registry lock, recorded on the versions (tags) and as an MLflow run
(tag ``job``), and only then do aliases move. MLflow's alias update is last-writer-wins, so the lock
serialises deciders, and every move is verified by reading the aliases back. The lock is two locks:
a file lock (``<state>/locks``: the processes of one machine and state folder) and, in the tracking
store itself, a registered model ``<name>.registry-lock`` that exists while a decider holds it
(creating a registered model is atomic in MLflow's store, so deciders on every machine that share
a tracking server are serialised; a lock whose holder died is broken: at once on its own machine,
after ``SERVER_LOCK_LEASE_S`` elsewhere). The record and the moves are written to a journal first
(a file, and a tag of the store's lock): a decider killed half-way is completed by the next one
that takes the lock, unless a later decision has moved the aliases since; so no interrupted
decision leaves one alias moved and another not.

A version registered by the pipeline (``register_and_gate``) is *incomplete*
(``registration_state=incomplete``, its ``fingerprint`` held back as ``fingerprint_pending``)
until its gate decision is recorded (``complete``). If the run fails in between, the version is
deleted; if even that fails (the tracking server went away), the leftover stays marked incomplete:
no alias names it, ``promote`` and ``predict`` refuse it, ``retrain`` does not count it as trained,
and the next registry operation (any decision, or registering the same training run again) deletes
or completes it once its registering process is gone.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import re
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from filelock import FileLock, Timeout
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

import liverlesion
from liverlesion import paths
from liverlesion.predict import RESULT_COLUMNS
from liverlesion.promotion import DECIMALS, Decision, GateRules, decide, gate_scores
from liverlesion.segmentation import REFERENCE_SUFFIX
from liverlesion_ops.tracking import ensure_experiment, use_tracking_store

CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"
METRIC_TAG_PREFIX = "metric."
#: the name of the pyfunc model in the run (and what ``models:/<name>@champion`` loads)
PYFUNC_NAME = "lesion_classifier"
#: the serving environment: the GPU-capable TensorFlow build (``tensorflow``, not ``tensorflow-cpu``,
#: which a GPU server must not be pinned to), and what the domain package's inference path imports
SERVING_PACKAGES = ("keras", "numpy", "pandas", "scipy", "scikit-image", "nibabel")
SERVING_TENSORFLOW = "tensorflow==2.21.0"
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
#: how long a decider waits for another one to finish before giving up
LOCK_TIMEOUT_S = 900
#: the registered model that is the registry lock in the tracking store, while it exists: ``<name>`` + this
SERVER_LOCK_SUFFIX = ".registry-lock"
#: a store lock held longer than this by a process on another machine is taken as abandoned (its holder
#: died; one on this machine is broken as soon as its process is gone). A decision takes minutes at most.
SERVER_LOCK_LEASE_S = 1800
#: breaking an abandoned store lock takes a second lock, ``<lock>.breaker``, held for milliseconds: one
#: left longer than this (its breaker died on another machine) is deleted
BREAKER_LEASE_S = 60
#: the tags of a registration still waiting for its gate decision (``register_and_gate``)
REGISTRATION_STATE, INCOMPLETE, COMPLETE = "registration_state", "incomplete", "complete"
REGISTRATION_OWNER, FINGERPRINT_PENDING = "registration_owner", "fingerprint_pending"
#: an incomplete registration made on another machine is taken as abandoned after this long (on this
#: machine: as soon as the process that registered it is gone)
STALE_REGISTRATION_S = 3600
#: the longest model-version description MLflow's SQL schema holds (varchar(5000): PostgreSQL and MySQL
#: refuse a longer one, SQLite does not check)
DESCRIPTION_LIMIT = 5000


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (no such version, no previous champion, lock held)."""


def client() -> MlflowClient:
    """A client of the project's tracking and registry store (one per store: opening one costs ~2 s)."""
    return _client(use_tracking_store())


@functools.lru_cache(maxsize=4)
def _client(uri: str) -> MlflowClient:
    return MlflowClient(uri, uri)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def who() -> str:
    """The person or job deciding: ``$LIVERLESION_USER`` or the login name, with the host."""
    return f"{os.environ.get('LIVERLESION_USER') or getpass.getuser()}@{socket.gethostname()}"


# --- the lock -------------------------------------------------------------------------------------


def _lock_base(kind: str, name: str) -> Path:
    folder = paths.state_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"


def holder(kind: str, name: str) -> dict[str, Any] | None:
    """Who holds (or last held) a lock: pid, host, user, since, what."""
    path = _lock_base(kind, name).with_suffix(".holder.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def exclusive(kind: str, name: str, what: str, timeout: float) -> Iterator[None]:
    """A machine-wide lock (``<state>/locks/<kind>-<name>.lock``) naming its holder.

    Raises:
        RegistryError: another process held it for ``timeout`` seconds; the message names it.
    """
    base = _lock_base(kind, name)
    lock = FileLock(str(base.with_suffix(".lock")))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        held = holder(kind, name) or {}
        raise RegistryError(
            f"the {kind} lock of {name} is held by pid {held.get('pid', '?')} on {held.get('host', '?')} "
            f"({held.get('user', '?')}, since {held.get('since', '?')}: {held.get('what', '?')})"
        ) from None
    try:
        base.with_suffix(".holder.json").write_text(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "user": who(), "since": now(), "what": what})
        )
        yield
    finally:
        lock.release()


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (clock ticks after boot, from /proc): tells a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_id() -> str:
    """This process, as recorded on the store lock and on an incomplete registration: host:pid:start."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def process_gone(owner: str) -> bool | None:
    """Whether the process ``owner`` (``process_id()``) has ended: True or False on this machine, None on
    another one (it cannot be checked from here)."""
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except ValueError:
        return True
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    return bool(started) and _start_ticks(pid) != started  # the pid now names another process


#: the store locks this process holds now: model name -> token
_HELD: dict[str, str] = {}


def _server_lock_tags(mlflow_client: MlflowClient, lock: str) -> dict[str, str] | None:
    try:
        return dict(mlflow_client.get_registered_model(lock).tags)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _holder_text(held: dict[str, str]) -> str:
    return (
        f"{held.get('user', '?')} (process {held.get('owner', '?')}, since {held.get('since', '?')}: "
        f"{held.get('what', '?')})"
    )


def _abandoned(held: dict[str, str]) -> str | None:
    """Why a store lock is abandoned (its holder is gone), or None while it may be alive."""
    owner = held.get("owner", "")
    if owner == process_id() and held.get("token") not in _HELD.values():
        return "this process left it (it could not release it)"
    gone = process_gone(owner)
    if gone:
        return "its process has ended"
    try:
        age = time.time() - float(held.get("since_epoch", "nan"))
    except ValueError:
        age = float("nan")
    if gone is None and not age < SERVER_LOCK_LEASE_S:
        return f"held for more than {SERVER_LOCK_LEASE_S // 60} minutes by a process on another machine"
    return None


def _delete_model(mlflow_client: MlflowClient, name: str) -> bool:
    """Delete a registered model (a lock); False if it was gone already."""
    try:
        mlflow_client.delete_registered_model(name)
        return True
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _release(mlflow_client: MlflowClient, name: str, token: str) -> bool:
    """Delete the store lock if it is still the one with ``token``; whether it did."""
    lock = name + SERVER_LOCK_SUFFIX
    held = _server_lock_tags(mlflow_client, lock)
    return held is not None and held.get("token") == token and _delete_model(mlflow_client, lock)


def _break(mlflow_client: MlflowClient, name: str, held: dict[str, str], why: str) -> None:
    """Break the abandoned store lock ``held`` (completing its pending decision first), under a second lock
    ``<lock>.breaker``: two deciders that find the same abandoned lock never both break it, so neither
    deletes the lock the other then takes. If another decider is breaking it, do nothing (look again)."""
    lock = name + SERVER_LOCK_SUFFIX
    breaker = lock + ".breaker"
    try:
        mlflow_client.create_registered_model(
            breaker, tags={"owner": process_id(), "since_epoch": f"{time.time():.0f}"}
        )
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        other = _server_lock_tags(mlflow_client, breaker)
        if other is not None and (
            process_gone(other.get("owner", ""))
            or not time.time() - float(other.get("since_epoch") or 0) < BREAKER_LEASE_S
        ):
            _delete_model(mlflow_client, breaker)  # a breaker died while breaking
        return
    try:
        again = _server_lock_tags(mlflow_client, lock)
        if again is None or again.get("token") != held.get("token"):
            return  # released or broken meanwhile: only abandoned locks are deleted, and only here
        note = ("; " + _roll_forward(mlflow_client, name, json.loads(again["pending"]))) if again.get("pending") else ""
        if _delete_model(mlflow_client, lock):
            print(
                f"[registry] broke the registry lock of {name} left by {_holder_text(again)}: {why}{note}", flush=True
            )
    finally:
        _delete_model(mlflow_client, breaker)


@contextmanager
def server_lock(mlflow_client: MlflowClient, name: str, what: str, timeout: float) -> Iterator[str]:
    """The registry lock of ``name`` in the tracking store: registered model ``<name>.registry-lock``.

    Creating a registered model is atomic in MLflow's store (its name is unique), so of deciders that
    share a tracking server, on any machine, one holds it at a time. Its tags name the holder and hold
    the decision under way (``pending``). A lock whose holder is gone is broken (its pending decision
    completed first, see ``_roll_forward``): at once when the holder ran on this machine, after
    ``SERVER_LOCK_LEASE_S`` when it ran on another one.

    Yields:
        The lock's token.

    Raises:
        RegistryError: another decider held it for ``timeout`` seconds; the message names it.
    """
    lock = name + SERVER_LOCK_SUFFIX
    token = uuid.uuid4().hex
    holder = {
        "token": token,
        "owner": process_id(),
        "user": who(),
        "since": now(),
        "since_epoch": f"{time.time():.0f}",
        "what": what,
    }
    deadline = time.monotonic() + timeout
    while True:
        try:
            mlflow_client.create_registered_model(
                lock,
                tags=holder,
                description=f"The registry lock of {name} (liverlesion): it exists while a decision "
                "about that model is taken. Not a model.",
            )
            break
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        held = _server_lock_tags(mlflow_client, lock)
        if held is None:
            continue  # released meanwhile
        if held.get("token") == token:
            break  # our creation was done, then retried by the HTTP client
        why = _abandoned(held)
        if why is not None:
            _break(mlflow_client, name, held, why)
            continue
        if time.monotonic() >= deadline:
            raise RegistryError(
                f"the registry lock of {name} in the tracking store is held by {_holder_text(held)}; "
                f"a lock whose holder died is broken by the next decider on its machine, or after "
                f"{SERVER_LOCK_LEASE_S // 60} minutes elsewhere"
            )
        time.sleep(1.0)
    _HELD[name] = token
    try:
        yield token
    finally:
        _HELD.pop(name, None)
        try:
            _release(mlflow_client, name, token)
        except MlflowException as err:  # e.g. the server went away: the next decider breaks it (its holder is gone)
            print(
                f"[registry] could not release the registry lock of {name} ({err.message.splitlines()[0][:200]}); "
                "the next registry operation breaks it",
                flush=True,
            )


# --- registration ---------------------------------------------------------------------------------


def serving_requirements() -> list[str]:
    """Pinned requirements of the served model: the installed versions, TensorFlow's GPU-capable build."""
    return [SERVING_TENSORFLOW, *(f"{name}=={installed_version(name)}" for name in SERVING_PACKAGES)]


def serving_settings(model_name: str, profile: dict[str, Any]) -> dict[str, Any]:
    """What the served model needs besides the network: the profile's patch settings and scoring."""
    evaluate = profile.get("evaluate", {})
    return {
        "model_name": model_name,
        "patches": profile["patches"],
        "threshold": evaluate.get("threshold", 0.5),
        "precision": evaluate.get("precision", "auto"),
        "profile": profile.get("name", ""),
    }


def log_serving_model(model, settings: dict[str, Any], card: dict[str, Any], card_markdown: str) -> str:
    """Log the pyfunc that takes a CT and its lesion mask (``serving/lesion_classifier.py``) in the
    active run: the Keras network, the patch settings and threshold, the domain package as code, and
    the model card (``model_card.md`` and ``model_card.json`` among its artifacts).

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
        model.save(files["keras_model"])
        files["settings"].write_text(json.dumps(settings, indent=2, sort_keys=True))
        files["model_card"].write_text(card_markdown, encoding="utf-8")
        files["model_card_json"].write_text(json.dumps(card, indent=2, sort_keys=True), encoding="utf-8")
        with warnings.catch_warnings():  # an input example would be a whole CT in base64: the signature says it
            warnings.filterwarnings("ignore", message=".*An input example was not provided")  # (colour codes first)
            info = mlflow.pyfunc.log_model(
                name=PYFUNC_NAME,
                python_model=str(paths.code_root() / "serving" / "lesion_classifier.py"),
                artifacts={key: str(path) for key, path in files.items()},
                code_paths=[str(Path(liverlesion.__file__).parent)],
                signature=SIGNATURE,
                pip_requirements=serving_requirements(),
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
    model,
    run_id: str,
    name: str,
    metrics: dict[str, float],
    lineage: dict[str, str],
    profile: dict[str, Any],
    card: dict[str, Any],
    card_markdown: str,
    incomplete: bool = False,
) -> Registered:
    """Log the served model in training run ``run_id`` and register it with every lineage and metric tag.

    Idempotent per training run: if ``run_id`` already has a version, that version is returned; if that
    version is an incomplete registration whose registering process is gone, it is taken over (and
    returned as created, to be gated again). With ``incomplete``, the version is registered as
    incomplete (``registration_state``), its ``fingerprint`` held back until a decision completes it.
    """
    mlflow_client = client()
    existing = version_of_run(mlflow_client, name, run_id)
    if existing is not None:
        if not (incomplete and incomplete_registration(existing) and _abandoned_registration(existing)):
            return Registered(str(existing.version), existing.source, created=False)
        mlflow_client.set_model_version_tag(name, existing.version, REGISTRATION_OWNER, process_id())
        mlflow_client.update_model_version(name, existing.version, description=version_description(card_markdown))
        print(f"[registry] took over the incomplete registration v{existing.version} of run {run_id}", flush=True)
        return Registered(str(existing.version), existing.source, created=True)
    with mlflow.start_run(run_id=run_id):
        model_uri = log_serving_model(model, serving_settings(name, profile), card, card_markdown)
    tags = {**lineage, **{METRIC_TAG_PREFIX + k: f"{v:.{DECIMALS}f}" for k, v in metrics.items()}}
    if incomplete:
        tags.update({REGISTRATION_STATE: INCOMPLETE, REGISTRATION_OWNER: process_id()})
        if "fingerprint" in tags:  # what `retrain` looks for: only once the version is complete
            tags[FINGERPRINT_PENDING] = tags.pop("fingerprint")
    version = mlflow.register_model(model_uri, name, tags=tags)
    try:
        mlflow_client.update_model_version(name, version.version, description=version_description(card_markdown))
    except BaseException:
        _delete_or_leave(mlflow_client, name, str(version.version))
        raise
    return Registered(str(version.version), model_uri, created=True)


def version_description(card_markdown: str) -> str:
    """The model card as a version's description: whole if it fits ``DESCRIPTION_LIMIT``, else its first
    sections (``## ``) that fit, and a line naming the others and where the whole card is."""
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
    note = (
        f"\n\n*Shortened to fit the registry ({', '.join(dropped)} left out): the whole card is "
        "`model_card.md` beside the served model and in the training run's `model_card/` artifacts.*\n"
    )
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


def _discard_failed(mlflow_client: MlflowClient, name: str, version: str) -> None:
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
    print(
        f"[registry] could not delete the failed registration v{version} of {name} (the tracking store cannot be "
        f"reached); it stays marked {REGISTRATION_STATE}={INCOMPLETE}: never served nor promoted, and the next "
        "registry operation removes it",
        flush=True,
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


def alias_version(mlflow_client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(mlflow_client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def aliases(mlflow_client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in mlflow_client.get_registered_model(name).aliases.items()}


def check_version(mlflow_client: MlflowClient, name: str, version: str):
    try:
        return mlflow_client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(
            f"no version {version} of registered model {name!r} (`liverlesion models` lists them)"
        ) from None


# --- decisions: journal, record, aliases -----------------------------------------------------------


def _journal(name: str) -> Path:
    return _lock_base("registry", name).with_suffix(".pending.json")


def _apply(mlflow_client: MlflowClient, name: str, entry: dict[str, Any]) -> None:
    """Write a decision's tags and MLflow run (once: keyed by its id) and move the aliases; verify."""
    for version, tags in entry["tags"].items():
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(name, version, key, value)
    run = entry["run"]
    experiment = ensure_experiment(run["experiment"])
    done = mlflow_client.search_runs([experiment], f"tags.decision_id = '{entry['id']}'")
    if not done:
        active = mlflow_client.create_run(
            experiment, run_name=run["name"], tags={**run["tags"], "decision_id": entry["id"]}
        )
        run_id = active.info.run_id
        for key, value in run["params"].items():
            mlflow_client.log_param(run_id, key, value)
        for key, value in run["metrics"].items():
            mlflow_client.log_metric(run_id, key, value)
        mlflow_client.set_terminated(run_id)
    for alias, version in entry["aliases"].items():
        if version is None:
            if alias_version(mlflow_client, name, alias) is not None:
                mlflow_client.delete_registered_model_alias(name, alias)
        else:
            mlflow_client.set_registered_model_alias(name, alias, version)
    now_held = aliases(mlflow_client, name)
    wrong = {a: now_held.get(a) for a, v in entry["aliases"].items() if now_held.get(a) != v}
    if wrong:  # someone moved an alias outside the lock (another machine): say so, do not guess
        raise RegistryError(
            f"{name}: aliases read back as {wrong} after setting {entry['aliases']}: another "
            "client changed them at the same time; check `liverlesion models` and decide again"
        )


def _recover(mlflow_client: MlflowClient, name: str) -> str | None:
    """Complete a decision whose decider was killed after writing its journal file (roll forward)."""
    path = _journal(name)
    if not path.exists():
        return None
    note = _roll_forward(mlflow_client, name, json.loads(path.read_text()))
    path.unlink()
    return note


def _roll_forward(mlflow_client: MlflowClient, name: str, entry: dict[str, Any]) -> str:
    """Complete an interrupted decision, unless a version it names is gone, or a later decision has moved
    an alias since (to neither where the decision found it nor where it was moving it)."""
    versions = {v for v in (*entry["tags"], *entry["aliases"].values()) if v is not None}
    if not all(_exists(mlflow_client, name, v) for v in versions):
        return f"dropped an interrupted decision about a version that no longer exists ({entry['id']})"
    # every decision names itself in `last_decision` before it is journalled: another id there means a later
    # decision was taken since (e.g. this one completed from another machine, then rolled back): replaying
    # this one would undo it, even where the aliases are back where this one found them
    last = (mlflow_client.get_registered_model(name).tags or {}).get("last_decision", "")
    if not last.endswith(f"({entry['id']})"):
        return (
            f"dropped an interrupted decision ({entry['run']['name']}, {entry['id']}): a later decision was taken since"
        )
    before = entry.get("before")
    if before is not None:
        held = aliases(mlflow_client, name)
        moved = {a: held.get(a) for a, target in entry["aliases"].items() if held.get(a) not in (before.get(a), target)}
        if moved:
            return (
                f"dropped an interrupted decision ({entry['run']['name']}, {entry['id']}): later decisions moved "
                f"{moved} since"
            )
    _apply(mlflow_client, name, entry)
    return f"completed an interrupted decision ({entry['run']['name']}, {entry['id']})"


def _exists(mlflow_client: MlflowClient, name: str, version: str) -> bool:
    try:
        mlflow_client.get_model_version(name, version)
        return True
    except MlflowException:
        return False


def decide_and_record(mlflow_client: MlflowClient, name: str, entry: dict[str, Any]) -> None:
    """Journal, then apply, a decision (under the registry lock).

    The journal is a file (this machine) and the ``pending`` tag of the store lock (any machine). First
    the model's ``last_decision`` tag is written: a caller the tracking server does not let change the
    model (a reader) is refused there, before anything is journalled or changed.
    """
    entry = {"id": uuid.uuid4().hex, **entry}
    held = aliases(mlflow_client, name)
    entry["before"] = {alias: held.get(alias) for alias in entry["aliases"]}
    mlflow_client.set_registered_model_tag(
        name, "last_decision", f"{entry['run']['name']} by {who()} at {now()} ({entry['id']})"
    )
    if name in _HELD:  # still ours? (a lock is broken only when abandoned, so only a holder taken for dead loses it)
        lock = name + SERVER_LOCK_SUFFIX
        if (_server_lock_tags(mlflow_client, lock) or {}).get("token") != _HELD[name]:
            raise RegistryError(
                f"the registry lock of {name} was broken by another decider, which took this one "
                "for dead: nothing was changed; decide again"
            )
        mlflow_client.set_registered_model_tag(lock, "pending", json.dumps(entry))
    path = _journal(name)
    path.write_text(json.dumps(entry))
    _apply(mlflow_client, name, entry)
    path.unlink()


@contextmanager
def registry_lock(name: str, what: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[MlflowClient]:
    """The registry lock of model ``name``: this machine's file lock, then the tracking store's lock.

    Under it, an interrupted decision is completed first, and the abandoned incomplete registrations
    of the model are removed.
    """
    started = time.monotonic()
    with exclusive("registry", name, what, timeout):
        mlflow_client = client()
        with server_lock(mlflow_client, name, what, max(0.0, timeout - (time.monotonic() - started))):
            note = _recover(mlflow_client, name)
            if note:
                print(f"[registry] {note}", flush=True)
            removed = sweep_incomplete(mlflow_client, name)
            if removed:
                print(
                    f"[registry] removed the abandoned incomplete registration(s) "
                    f"{', '.join('v' + v for v in removed)} of {name}",
                    flush=True,
                )
            yield mlflow_client


def _decision_tags(decision: str, reason: str, job: str, by: str, at: str, **more: str) -> dict[str, str]:
    return {
        "decision": decision,
        "decision_reason": reason,
        "decision_job": job,
        "decision_by": by,
        "decision_at": at,
        **more,
    }


# --- the gate ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateSet:
    """The lesions the gate scores both models on: labels by lesion id, the cases holding them."""

    labels: pd.Series
    cases: pd.DataFrame
    description: str  # e.g. "the test split of v3 (46 lesions, 13 patients)"


def split_gate_set(
    manifest: pd.DataFrame,
    manifest_hash: str,
    cases: pd.DataFrame,
    lesions: pd.DataFrame,
    segmentation_lesions: pd.DataFrame | None = None,
) -> GateSet:
    """The test split of a run (``splitting`` manifest; ``lesions`` maps lesion ids to cases).

    A run whose lesions came from automatic segmentation is gated on the reference lesions of its
    test patients (``segmentation_lesions``): the registered model scores a CT's lesions from its
    reference mask, and champion and challenger are compared on the same, drawn, lesions.
    """
    reference = (
        segmentation_lesions[segmentation_lesions["kind"] == "reference"]
        if segmentation_lesions is not None
        else pd.DataFrame()
    )
    if not reference.empty:
        test_patients = set(manifest.loc[manifest["set"] == "test", "patient_key"])
        drawn = reference[reference["patient_key"].isin(test_patients) & reference["label"].notna()]
        labels = pd.Series(
            drawn["label"].astype(int).to_numpy(),
            index=drawn["lesion_id"].str.removesuffix(REFERENCE_SUFFIX),
            name="label",
        )
        return GateSet(
            labels,
            cases[cases["case_id"].isin(set(drawn["case_id"]))],
            f"the reference lesions of the test patients of split {manifest_hash[:12]} ({len(drawn)} "
            f"lesions, {len(test_patients)} patient(s))",
        )
    test = manifest[manifest["set"] == "test"]
    case_ids = set(lesions.loc[lesions["lesion_id"].isin(set(test["lesion_id"])), "case_id"])
    return GateSet(
        test.set_index("lesion_id")["label"],
        cases[cases["case_id"].isin(case_ids)],
        f"the test split {manifest_hash[:12]} of this run ({len(test)} lesions, "
        f"{test['patient_key'].nunique()} patient(s))",
    )


def cohort_gate_set(folder: str | Path) -> GateSet:
    """A pinned evaluation cohort (a cohort folder; relative paths from the project root): its typed lesions.

    Raises:
        ContractError: the folder breaks the data contract, naming the case.
    """
    from liverlesion.ingestion import ingest_cases, labelled_lesions, segment_cases, types_by_case

    root = Path(folder) if Path(folder).is_absolute() else paths.project_root() / folder
    ingested = ingest_cases(root, "pinned")
    lesions, _ = labelled_lesions(segment_cases(ingested.cases, ingested.crops, types_by_case(ingested.lesion_types)))
    return GateSet(
        lesions.set_index("lesion_id")["label"],
        ingested.cases,
        f"the pinned evaluation cohort {root} ({len(lesions)} typed lesions, "
        f"{lesions['patient_key'].nunique()} patient(s))",
    )


def load_predictor(name: str, version: str):
    """The registered artefact of a version, as ``predict`` uses it."""
    served = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
    predictor = served.predictor
    predictor.model_name, predictor.model_version = name, str(version)
    return predictor


def score_version(name: str, version: str, gate_set: GateSet) -> tuple[dict[str, float], str]:
    """A version's metrics on the gate's lesions, by its registered artefact; and the precision used."""
    predictor = load_predictor(name, version)
    probability = predictor.score_cases(gate_set.cases, set(gate_set.labels.index))
    return gate_scores(gate_set.labels, probability, predictor.threshold), predictor.precision


def gate(
    name: str,
    version: str,
    gate_set: GateSet,
    rules: GateRules,
    experiment: str,
    job: str,
    context: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Score version ``version`` and the champion on the same lesions, decide, record, move aliases.

    Returns:
        The decision's record: outcome, reason, both versions' figures, the aliases afterwards.
    """
    with registry_lock(name, f"gate of v{version} ({job})") as mlflow_client:
        champion = alias_version(mlflow_client, name, CHAMPION)
        registered = mlflow_client.get_model_version(name, version).tags
        completion = {}  # an incomplete registration is complete once its decision is recorded
        if registered.get(REGISTRATION_STATE) == INCOMPLETE:
            completion = {
                REGISTRATION_STATE: COMPLETE,
                **({"fingerprint": registered[FINGERPRINT_PENDING]} if FINGERPRINT_PENDING in registered else {}),
            }
        candidate, precision = score_version(name, version, gate_set)
        incumbent, incumbent_precision = (
            score_version(name, champion, gate_set) if champion is not None else (None, None)
        )
        decision: Decision = decide(candidate, incumbent, rules)
        at, by = now(), who()
        figures = {f"gate.candidate.{k}": f"{v:.{DECIMALS}f}" for k, v in candidate.items()}
        if incumbent is not None:
            figures.update({f"gate.champion.{k}": f"{v:.{DECIMALS}f}" for k, v in incumbent.items()})
        scored_on = f"{gate_set.description}; scored by the registered artefacts in {precision}" + (
            f" (champion: {incumbent_precision})" if incumbent_precision not in (None, precision) else ""
        )
        tags = _decision_tags(
            decision.outcome,
            decision.reason,
            job,
            by,
            at,
            **figures,
            compared_with=f"v{champion}" if champion else "none",
            gate_scored_on=scored_on,
            gate_rules=json.dumps(
                {"primary_metric": rules.primary_metric, "min_margin": rules.min_margin, "floors": dict(rules.floors)}
            ),
        )
        moves: dict[str, str | None] = {}
        version_tags = {version: {**tags, **completion}}
        if decision.outcome == "promoted":
            moves = {CHAMPION: version}
            if champion is not None:
                moves[PREVIOUS_CHAMPION] = champion
                version_tags[champion] = _decision_tags(
                    "superseded", f"v{version} passed the gate: {decision.reason}", job, by, at
                )
            if alias_version(mlflow_client, name, CHALLENGER) is not None:
                moves[CHALLENGER] = None  # it lost to the champion now replaced: no contender until the next one
        elif decision.outcome == "challenger":
            moves = {CHALLENGER: version}
        metrics = {f"candidate_{k}": v for k, v in candidate.items()}
        metrics.update({f"champion_{k}": v for k, v in (incumbent or {}).items()})
        entry = {
            "tags": version_tags,
            "aliases": moves,
            "run": {
                "experiment": experiment,
                "name": f"gate-v{version}",
                "tags": {
                    "job": job,
                    "model_name": name,
                    "model_version": version,
                    "decision": decision.outcome,
                    "decision_reason": decision.reason,
                    "compared_with": tags["compared_with"],
                    "decision_by": by,
                    **(context or {}),
                },
                "params": {
                    "primary_metric": rules.primary_metric,
                    "min_margin": rules.min_margin,
                    "floors": json.dumps(dict(rules.floors)),
                    "scored_on": scored_on[:500],
                },
                "metrics": {k: v for k, v in metrics.items() if v == v},
            },  # MLflow refuses no NaN, but keep it clean
        }
        decide_and_record(mlflow_client, name, entry)
        return {
            "version": version,
            "decision": decision.outcome,
            "reason": decision.reason,
            "compared_with": champion,
            "candidate": candidate,
            "champion": incumbent,
            "scored_on": scored_on,
            "aliases": aliases(mlflow_client, name),
        }


# --- manual decisions -----------------------------------------------------------------------------


def promote(name: str, version: str, reason: str, experiment: str) -> dict[str, Any]:
    """Make ``version`` the champion by hand (a person's decision, recorded with who, when and why).

    Raises:
        RegistryError: no such version, it is the champion already, or the lock is held too long.
    """
    with registry_lock(name, f"promote v{version}") as mlflow_client:
        check_servable(mlflow_client, name, version)
        champion = alias_version(mlflow_client, name, CHAMPION)
        if champion == str(version):
            raise RegistryError(f"{name} v{version} is the champion already")
        at, by = now(), who()
        moves: dict[str, str | None] = {CHAMPION: str(version)}
        if champion is not None:
            moves[PREVIOUS_CHAMPION] = champion
        if alias_version(mlflow_client, name, CHALLENGER) == str(version):
            moves[CHALLENGER] = None
        tags = {
            str(version): _decision_tags(
                "promoted", reason, "promote", by, at, compared_with=f"v{champion}" if champion else "none"
            )
        }
        if champion is not None:
            tags[champion] = _decision_tags("superseded", f"v{version} promoted by hand: {reason}", "promote", by, at)
        decide_and_record(
            mlflow_client,
            name,
            {
                "tags": tags,
                "aliases": moves,
                "run": {
                    "experiment": experiment,
                    "name": f"promote-v{version}",
                    "tags": {
                        "job": "promote",
                        "model_name": name,
                        "model_version": str(version),
                        "decision": "promoted",
                        "decision_reason": reason,
                        "decision_by": by,
                        "previous_champion": champion or "none",
                    },
                    "params": {},
                    "metrics": {},
                },
            },
        )
        return {
            "job": "promote",
            "version": str(version),
            "previous_champion": champion,
            "reason": reason,
            "by": by,
            "at": at,
            "aliases": aliases(mlflow_client, name),
        }


def rollback(name: str, reason: str, experiment: str) -> dict[str, Any]:
    """Give the champion alias back to ``previous_champion`` (and ``previous_champion`` to the version
    rolled back, so a second rollback undoes the first); recorded with who, when and why.

    Raises:
        RegistryError: there is no previous champion, or the lock is held too long.
    """
    with registry_lock(name, "rollback") as mlflow_client:
        champion = alias_version(mlflow_client, name, CHAMPION)
        previous = alias_version(mlflow_client, name, PREVIOUS_CHAMPION)
        if previous is None or champion is None:
            raise RegistryError(
                f"{name} has no {PREVIOUS_CHAMPION} to roll back to "
                f"(champion: {('v' + champion) if champion else 'none'})"
            )
        at, by = now(), who()
        tags = {
            previous: _decision_tags("restored", reason, "rollback", by, at, compared_with=f"v{champion}"),
            champion: _decision_tags("rolled_back", reason, "rollback", by, at),
        }
        decide_and_record(
            mlflow_client,
            name,
            {
                "tags": tags,
                "aliases": {CHAMPION: previous, PREVIOUS_CHAMPION: champion},
                "run": {
                    "experiment": experiment,
                    "name": f"rollback-v{champion}-to-v{previous}",
                    "tags": {
                        "job": "rollback",
                        "model_name": name,
                        "model_version": previous,
                        "decision": "rolled_back",
                        "decision_reason": reason,
                        "decision_by": by,
                        "rolled_back_version": champion,
                    },
                    "params": {},
                    "metrics": {},
                },
            },
        )
        return {
            "job": "rollback",
            "version": previous,
            "rolled_back": champion,
            "reason": reason,
            "by": by,
            "at": at,
            "aliases": aliases(mlflow_client, name),
        }


def register_and_gate(
    model,
    run_id: str,
    name: str,
    metrics: dict[str, float],
    lineage: dict[str, str],
    profile: dict[str, Any],
    card: dict[str, Any],
    card_markdown: str,
    gate_set: Callable[[], GateSet],
    rules: GateRules,
    experiment: str,
    context: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Register a trained model and pass it through the gate, all or nothing.

    ``gate_set`` makes the gate's lesions when they are needed (a pinned cohort is read from disk),
    not when the training run was registered before.

    The new version is incomplete until its decision is recorded. If the gate fails (an error, an
    interruption) before any alias names it, it is deleted again: no half-registered model, no moved
    alias; if the tracking store cannot be reached even for that, it stays incomplete (never served
    nor promoted) until the next registry operation removes it, or a re-run of the same training
    run takes it over. A training run registered before (a re-run of a cached model) is not
    registered or gated again.

    Returns:
        ``{"version", "created", "decision", "reason", "aliases", "model_uri", ...}`` (the gate's record
        when the version is new).
    """
    registered = register_version(model, run_id, name, metrics, lineage, profile, card, card_markdown, incomplete=True)
    mlflow_client = client()
    if not registered.created:
        tags = mlflow_client.get_model_version(name, registered.version).tags
        return {
            "version": registered.version,
            "created": False,
            "decision": tags.get("decision", ""),
            "reason": tags.get("decision_reason", ""),
            "aliases": aliases(mlflow_client, name),
            "model_uri": registered.model_uri,
        }
    try:
        result = gate(name, registered.version, gate_set(), rules, experiment, job="gate", context=context)
    except BaseException:
        _discard_failed(mlflow_client, name, registered.version)
        raise
    return {**result, "created": True, "model_uri": registered.model_uri}
