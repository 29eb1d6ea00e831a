"""How a registry decision is taken: under the registry lock, journalled, applied, read back; and completed by
the next decider if its own was killed half-way."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from liverlesion_ops.registry.locks import (
    LOCK_TIMEOUT_S,
    SERVER_LOCK_SUFFIX,
    held_token,
    lock_file,
    machine_lock,
    store_lock,
    store_lock_tags,
    sweep_retired,
)
from liverlesion_ops.registry.registration import sweep_incomplete
from liverlesion_ops.registry.store import (
    RegistryError,
    acting_user,
    alias_version,
    aliases,
    registry_client,
    timestamp,
    version_exists,
)
from liverlesion_ops.tracking import ensure_experiment

log = logging.getLogger(__name__)


def _journal(name: str) -> Path:
    return lock_file("registry", name).with_suffix(".pending.json")


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
    note = roll_forward(mlflow_client, name, json.loads(path.read_text()))
    path.unlink()
    return note


def roll_forward(mlflow_client: MlflowClient, name: str, entry: dict[str, Any]) -> str:
    """Complete an interrupted decision, unless a version it names is gone, or a later decision has moved
    an alias since (to neither where the decision found it nor where it was moving it)."""
    versions = {v for v in (*entry["tags"], *entry["aliases"].values()) if v is not None}
    if not all(version_exists(mlflow_client, name, v) for v in versions):
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


def decide_and_record(mlflow_client: MlflowClient, name: str, entry: dict[str, Any]) -> None:
    """Journal, then apply, a decision (under the registry lock).

    The journal is a file (this machine) and the ``pending`` tag of the store lock (any machine). Before any
    write, the store lock is checked to be still this process's (a lock is broken only when taken for
    abandoned, so only a holder taken for dead loses it). Then the model's ``last_decision`` tag is written: a
    caller the tracking server does not let change the model (a reader) is refused there, before anything is
    journalled or changed.
    """
    entry = {"id": uuid.uuid4().hex, **entry}
    lock = name + SERVER_LOCK_SUFFIX
    if held_token(name) is not None and (store_lock_tags(mlflow_client, lock) or {}).get("token") != held_token(name):
        raise RegistryError(
            f"the registry lock of {name} was broken by another decider, which took this one "
            "for dead: nothing was changed; decide again"
        )
    held = aliases(mlflow_client, name)
    entry["before"] = {alias: held.get(alias) for alias in entry["aliases"]}
    mlflow_client.set_registered_model_tag(
        name, "last_decision", f"{entry['run']['name']} by {acting_user()} at {timestamp()} ({entry['id']})"
    )
    if held_token(name) is not None:
        mlflow_client.set_registered_model_tag(lock, "pending", json.dumps(entry))
    path = _journal(name)
    path.write_text(json.dumps(entry))
    _apply(mlflow_client, name, entry)
    path.unlink()


@contextmanager
def registry_lock(name: str, what: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[MlflowClient]:
    """The registry lock of model ``name``: this machine's file lock, then the tracking store's lock.

    Under it, an interrupted decision is completed first, and the abandoned incomplete registrations
    of the model, and the retired locks a decider could not delete, are removed.
    """
    started = time.monotonic()
    with machine_lock("registry", name, what, timeout):
        mlflow_client = registry_client()
        with store_lock(mlflow_client, name, what, max(0.0, timeout - (time.monotonic() - started)), roll_forward):
            note = _recover(mlflow_client, name)
            if note:
                log.info(f"{note}")
            removed = sweep_incomplete(mlflow_client, name)
            if removed:
                log.info(
                    f"removed the abandoned incomplete registration(s) {', '.join('v' + v for v in removed)} of {name}",
                )
            retired = sweep_retired(mlflow_client, name)
            if retired:
                log.info(f"deleted the retired registry lock(s) left in the tracking store: {', '.join(retired)}")
            yield mlflow_client


def decision_tags(decision: str, reason: str, job: str, by: str, at: str, **more: str) -> dict[str, str]:
    return {
        "decision": decision,
        "decision_reason": reason,
        "decision_job": job,
        "decision_by": by,
        "decision_at": at,
        **more,
    }
