"""The locks that serialise registry decisions: a file lock for the processes of one machine, and a
registered model in the tracking store (``<name>.registry-lock``) for every machine that shares it."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from liverlesion_ops import project
from liverlesion_ops.registry.store import RegistryError, acting_user, timestamp


class LockHeld(RegistryError):
    """Another process held a lock longer than the caller would wait; the message names it."""


log = logging.getLogger(__name__)

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


def lock_file(kind: str, name: str) -> Path:
    """``<state>/locks/<kind>-<name>``: the stem of a machine lock's files (``.lock``, ``.holder.json``)."""
    return project.locks_dir() / f"{kind}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"


def lock_holder(kind: str, name: str) -> dict[str, Any] | None:
    """Who holds (or last held) a lock: pid, host, user, since, what."""
    path = lock_file(kind, name).with_suffix(".holder.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def machine_lock(kind: str, name: str, what: str, timeout: float) -> Iterator[None]:
    """A machine-wide lock (``<state>/locks/<kind>-<name>.lock``) naming its holder.

    Raises:
        RegistryError: another process held it for ``timeout`` seconds; the message names it.
    """
    base = lock_file(kind, name)
    lock = FileLock(str(base.with_suffix(".lock")))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        held = lock_holder(kind, name) or {}
        raise LockHeld(
            f"the {kind} lock of {name} is held by pid {held.get('pid', '?')} on {held.get('host', '?')} "
            f"({held.get('user', '?')}, since {held.get('since', '?')}: {held.get('what', '?')})"
        ) from None
    try:
        base.with_suffix(".holder.json").write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "user": acting_user(),
                    "since": timestamp(),
                    "what": what,
                }
            )
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


@functools.cache
def machine() -> str:
    """This machine and process namespace, as a lock records it: ``<host name>/<key>``, the key a hash of the
    host name, ``/etc/machine-id`` (or this boot's id) and the pid namespace. Two containers that share a host
    name have pid namespaces of their own: each sees the other's processes as on another machine, never as
    ended because a pid is absent from its own namespace."""
    parts = [socket.gethostname()]
    for source in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            parts.append(Path(source).read_text().strip())
            break
        except OSError:
            continue
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return f"{parts[0]}/{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:12]}"


def process_id() -> str:
    """This process, as recorded on the store lock and on an incomplete registration: machine:pid:start."""
    return f"{machine()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def process_gone(owner: str) -> bool | None:
    """Whether the process ``owner`` (``process_id()``) has ended: True or False on this machine and in this pid
    namespace, None elsewhere (it cannot be checked from here)."""
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != machine():
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


def held_token(name: str) -> str | None:
    """The token of the store lock of ``name`` this process holds now (None: it holds none)."""
    return _HELD.get(name)


#: where ``store_lock_tags`` puts the tracking server's creation time of the lock (ms), beside its tags
CREATED_MS = "_created_ms"


def store_lock_tags(mlflow_client: MlflowClient, lock: str) -> dict[str, str] | None:
    """The tags of the store lock ``lock`` and, as ``CREATED_MS``, when the tracking server created it."""
    try:
        model = mlflow_client.get_registered_model(lock)
        return {**model.tags, CREATED_MS: str(model.creation_timestamp or "")}
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _holder_text(held: dict[str, str]) -> str:
    return (
        f"{held.get('user', '?')} (process {held.get('owner', '?')}, since {held.get('since', '?')}: "
        f"{held.get('what', '?')})"
    )


def _age_s(held: dict[str, str]) -> float:
    """Seconds since the tracking server created a lock (NaN when it does not say: taken as abandoned)."""
    try:
        return time.time() - float(held.get(CREATED_MS) or "nan") / 1000
    except ValueError:
        return float("nan")


def _abandoned(held: dict[str, str]) -> str | None:
    """Why a store lock is abandoned (its holder is gone), or None while it may be alive."""
    owner = held.get("owner", "")
    if owner == process_id() and held.get("token") not in _HELD.values():
        return "this process left it (it could not release it)"
    gone = process_gone(owner)
    if gone:
        return "its process has ended"
    # the lease runs from when the tracking server created the lock (its own timestamp, which no client sets:
    # a holder whose clock runs ahead, or a since_epoch tag in the future, cannot make a lock last for ever)
    if gone is None and not -SERVER_LOCK_LEASE_S < _age_s(held) < SERVER_LOCK_LEASE_S:
        return f"held for more than {SERVER_LOCK_LEASE_S // 60} minutes by a process on another machine"
    return None


#: a lock (or breaker) is removed by renaming it to ``<its name>`` + this + a fresh id, then deleting that
RETIRED_INFIX = ".retired-"


def _retire(mlflow_client: MlflowClient, name: str) -> bool:
    """Remove the registered model ``name`` (a lock or a breaker); False if it was gone already.

    Not ``delete_registered_model(name)``: MLflow's HTTP client repeats a request whose answer was lost (a
    timeout, a dropped connection, a 5xx) after the server had done it, and a repeated delete by name removes
    whatever holds the name by then: the lock another decider took in between. A rename to a name used once
    repeats harmlessly (the second finds that name taken, or the lock gone), and deleting that name touches
    no one else's lock. A retired name left behind (the server went away between the two) is swept by the
    next decider (``sweep_retired``)."""
    retired = f"{name}{RETIRED_INFIX}{uuid.uuid4().hex}"
    try:
        mlflow_client.rename_registered_model(name, retired)
    except MlflowException as err:
        gone = err.error_code == "PERMISSION_DENIED" and store_lock_tags(mlflow_client, name) is None  # see below
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST") and not gone:
            raise
        # ALREADY_EXISTS: a repeat of our own rename (no one else uses the name); DOES_NOT_EXIST: gone, by a
        # repeat of ours or before it
    return _delete_model(mlflow_client, retired)


def _delete_model(mlflow_client: MlflowClient, name: str) -> bool:
    """Delete a registered model that no one else names (a retired lock); False if it was gone already.

    MLflow's basic-auth app can answer PERMISSION_DENIED, not RESOURCE_DOES_NOT_EXIST, for a model deleted while
    it checked the request (it found the model, then nothing to authorise): the next decider's sweep and the
    retiring decider may delete the same retired name at once. A refusal is taken for "gone" only when the model
    is indeed gone; a reader, refused a model that exists, is still refused."""
    try:
        mlflow_client.delete_registered_model(name)
        return True
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        if err.error_code == "PERMISSION_DENIED" and store_lock_tags(mlflow_client, name) is None:
            return False
        raise


def sweep_retired(mlflow_client: MlflowClient, name: str) -> list[str]:
    """Delete the retired locks and breakers of model ``name`` that a decider left (see ``_retire``)."""
    prefix = name + SERVER_LOCK_SUFFIX
    found = mlflow_client.search_registered_models(f"name LIKE '{prefix}%{RETIRED_INFIX}%'")
    left = [  # this model's own: its lock's or its breaker's retired name, not another model's named alike
        m.name
        for m in found
        if m.name.startswith(prefix) and m.name[len(prefix) :].removeprefix(".breaker").startswith(RETIRED_INFIX)
    ]
    return [retired for retired in left if _delete_model(mlflow_client, retired)]


def _release(mlflow_client: MlflowClient, name: str, token: str) -> bool:
    """Delete the store lock if it is still the one with ``token``; whether it did."""
    lock = name + SERVER_LOCK_SUFFIX
    held = store_lock_tags(mlflow_client, lock)
    return held is not None and held.get("token") == token and _retire(mlflow_client, lock)


#: completes an abandoned lock's pending decision (``decisions.roll_forward``), saying what it did
RollForward = Callable[[MlflowClient, str, dict[str, Any]], str]


def _break(mlflow_client: MlflowClient, name: str, held: dict[str, str], why: str, roll_forward: RollForward) -> None:
    """Break the abandoned store lock ``held`` (completing its pending decision first), under a second lock
    ``<lock>.breaker``: two deciders that find the same abandoned lock never both break it, so neither
    deletes the lock the other then takes. If another decider is breaking it, do nothing (look again)."""
    lock = name + SERVER_LOCK_SUFFIX
    breaker = lock + ".breaker"
    try:
        mlflow_client.create_registered_model(breaker, tags={"owner": process_id(), "since": timestamp()})
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return  # taken, then gone as MLflow's store read it (as in store_lock): look again
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        other = store_lock_tags(mlflow_client, breaker)
        if other is not None and (
            process_gone(other.get("owner", "")) or not -BREAKER_LEASE_S < _age_s(other) < BREAKER_LEASE_S
        ):
            _retire(mlflow_client, breaker)  # a breaker died while breaking
        return
    try:
        again = store_lock_tags(mlflow_client, lock)
        if again is None or again.get("token") != held.get("token"):
            return  # released or broken meanwhile: only abandoned locks are deleted, and only here
        note = ("; " + roll_forward(mlflow_client, name, json.loads(again["pending"]))) if again.get("pending") else ""
        if _retire(mlflow_client, lock):
            log.info(f"broke the registry lock of {name} left by {_holder_text(again)}: {why}{note}")
    finally:
        _retire(mlflow_client, breaker)


@contextmanager
def store_lock(
    mlflow_client: MlflowClient, name: str, what: str, timeout: float, roll_forward: RollForward
) -> Iterator[str]:
    """The registry lock of ``name`` in the tracking store: registered model ``<name>.registry-lock``.

    Creating a registered model is atomic in MLflow's store (its name is unique), so of deciders that
    share a tracking server, on any machine, one holds it at a time. Its tags name the holder and hold
    the decision under way (``pending``). A lock whose holder is gone is broken (its pending decision
    completed first, see ``roll_forward``): at once when the holder ran on this machine, after
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
        "user": acting_user(),
        "since": timestamp(),
        "what": what,
    }
    deadline = time.monotonic() + timeout
    waiting = False
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
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue  # MLflow's SQL store found the name taken, then the lock gone when it read it: released
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        held = store_lock_tags(mlflow_client, lock)
        if held is None:
            continue  # released meanwhile
        if held.get("token") == token:
            break  # our creation was done, then retried by the HTTP client
        why = _abandoned(held)
        if why is not None:
            _break(mlflow_client, name, held, why, roll_forward)
            continue
        if not waiting:
            log.info("waiting for the registry lock of %s, held by %s", name, _holder_text(held))
            waiting = True
        if time.monotonic() >= deadline:
            raise LockHeld(
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
            log.info(
                f"could not release the registry lock of {name} ({err.message.splitlines()[0][:200]}); "
                "the next registry operation breaks it",
            )
