"""A person's decisions: a version made champion by hand, and the champion rolled back."""

from __future__ import annotations

from typing import Any

from liverlesion_ops.registry.decisions import decide_and_record, decision_tags, registry_lock
from liverlesion_ops.registry.registration import check_servable
from liverlesion_ops.registry.store import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    RegistryError,
    acting_user,
    alias_version,
    aliases,
    timestamp,
)


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
        at, by = timestamp(), acting_user()
        moves: dict[str, str | None] = {CHAMPION: str(version)}
        if champion is not None:
            moves[PREVIOUS_CHAMPION] = champion
        if alias_version(mlflow_client, name, CHALLENGER) == str(version):
            moves[CHALLENGER] = None
        tags = {
            str(version): decision_tags(
                "promoted", reason, "promote", by, at, compared_with=f"v{champion}" if champion else "none"
            )
        }
        if champion is not None:
            tags[champion] = decision_tags("superseded", f"v{version} promoted by hand: {reason}", "promote", by, at)
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
        at, by = timestamp(), acting_user()
        tags = {
            previous: decision_tags("restored", reason, "rollback", by, at, compared_with=f"v{champion}"),
            champion: decision_tags("rolled_back", reason, "rollback", by, at),
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
