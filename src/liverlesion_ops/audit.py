"""``liverlesion audit``: which patients, which bytes, which code and settings trained a model version,
and how the workspace now differs from them.

Everything comes from what was recorded when the model was trained and registered (the version's
tags, its training run's ``lineage/split_manifest.csv``) and from DVC's own objects (the version's
``.dir`` listing in the cache or the remote); nothing is inferred from today's configuration.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException

from liverlesion.contract import LABEL_NAMES
from liverlesion.modelcard import external_evaluations_from_tags
from liverlesion.splitting import SETS, manifest_hash
from liverlesion_ops import dvcobjects
from liverlesion_ops.datastore import DVC_FILE, dvc_hash, remote_name
from liverlesion_ops.registry.store import CHAMPION, RegistryError, aliases, registry_client

MANIFEST_ARTIFACT = "lineage/split_manifest.csv"


def resolve(name: str, ref: str | None):
    """A model version from ``3``, ``v3``, ``@alias`` or None (the champion).

    Raises:
        RegistryError: no such model, version or alias.
    """
    mlflow_client = registry_client()
    ref = ref or f"@{CHAMPION}"
    try:
        if ref.startswith("@"):
            return mlflow_client.get_model_version_by_alias(name, ref[1:])
        return mlflow_client.get_model_version(name, ref.lstrip("v"))
    except MlflowException:
        raise RegistryError(
            f"no {ref} of registered model {name!r} "
            f"(`liverlesion models --model {name}` lists its versions and aliases)"
        ) from None


def split_lineage(run_id: str, recorded_hash: str) -> dict[str, Any]:
    """The split manifest recorded with the training run: patient keys and lesions per class, per set."""
    mlflow_client = registry_client()
    try:
        local = mlflow_client.download_artifacts(run_id, MANIFEST_ARTIFACT)
    except (MlflowException, OSError) as err:
        return {"available": False, "problem": f"no {MANIFEST_ARTIFACT} in training run {run_id}: {err}"}
    manifest = pd.read_csv(local, dtype={"lesion_id": str, "patient_key": str, "set": str})
    sets = {}
    for name in SETS:
        chosen = manifest[manifest["set"] == name]
        counts = chosen["label"].value_counts()
        sets[name] = {
            "patients": sorted(chosen["patient_key"].unique().tolist()),
            "lesions": int(len(chosen)),
            **{LABEL_NAMES[label]: int(counts.get(label, 0)) for label in sorted(LABEL_NAMES)},
        }
    actual = manifest_hash(manifest)
    return {"available": True, "manifest_hash": actual, "matches_recorded_hash": actual == recorded_hash, "sets": sets}


def data_lineage(root: Path, version: str) -> dict[str, Any]:
    """Whether the DVC cache and remote hold a data version (or that it is a folder outside DVC).

    The remote is the one runs push to: the user's default DVC remote, else the local fallback.
    """
    if version.startswith("tree-"):
        return {
            "version": version,
            "kind": "external",
            "note": "a cohort folder outside the project's DVC (--data), versioned by its content hash: "
            "DVC holds no copy of it",
        }
    remote = remote_name(root)
    try:
        held = dvcobjects.holdings(root, version, remote=remote)
    except (ValueError, dvcobjects.DvcObjectsError) as err:
        return {"version": version, "kind": "dvc", "remote_name": remote, "problem": str(err)}
    restorable = "complete" in (held["cache"]["state"], held["remote"]["state"])
    entry = {
        "version": version,
        "kind": "dvc",
        "cache": held["cache"]["summary"],
        "remote": held["remote"]["summary"],
        "cache_state": held["cache"]["state"],
        "remote_state": held["remote"]["state"],
        "restorable": restorable,
        "remote_name": remote,
        "remote_location": held["remote"].get("location"),
    }
    if not held["cache"]["listing"] and not held["remote"]["listing"]:
        entry["problem"] = (
            f"the data of this version ({version}) is in neither the DVC cache nor the remote: it was "
            "garbage-collected (`dvc gc`) or never pushed. The lineage above is what the registry "
            "recorded; the bytes cannot be restored or compared."
        )
    return entry


def unversioned_changes(root: Path) -> bool | None:
    """Whether ``data/`` differs from what ``data.dvc`` records (``dvc status``); None if DVC cannot say."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json", DVC_FILE],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    try:
        return bool(json.loads(done.stdout or "null")) if done.returncode == 0 else None
    except ValueError:
        return None


def workspace(root: Path, version: str) -> dict[str, Any]:
    """The project's current data (``data.dvc``) held against the version's: same, or which cases changed;
    and whether ``data/`` holds changes not yet versioned."""
    current = dvc_hash(root)
    entry: dict[str, Any] = {
        "data_version": current,
        "same_data": current == version,
        "unversioned_changes": unversioned_changes(root) if current is not None else None,
    }
    if current is None or current == version or version.startswith("tree-"):
        return entry
    try:
        entry["changes"] = dvcobjects.case_changes(root, version, current, remote=remote_name(root))
    except (ValueError, dvcobjects.DvcObjectsError) as err:
        entry["problem"] = f"cannot compare the cases: {err}"
    return entry


def audit(name: str, ref: str | None, root: Path) -> dict[str, Any]:
    """The lineage of one model version and the workspace held against it (JSON-able)."""
    mv = resolve(name, ref)
    tags = mv.tags
    version = str(mv.version)
    data_version = tags.get("data_version", "")
    try:
        configuration = json.loads(tags.get("config", "{}"))
    except ValueError:
        configuration = {}
    return {
        "model": name,
        "version": version,
        "aliases": sorted(a for a, v in aliases(registry_client(), name).items() if v == version),
        "registered_at_ms": mv.creation_timestamp,
        "decision": {
            k: tags.get(f"decision{s}")
            for k, s in (("outcome", ""), ("reason", "_reason"), ("by", "_by"), ("at", "_at"), ("job", "_job"))
        }
        | {"compared_with": tags.get("compared_with")},
        "code": {
            "git_commit": tags.get("git_commit"),
            "git_dirty": tags.get("git_dirty"),
            "code_version": tags.get("code_version"),
        },
        "fingerprint": tags.get("fingerprint"),
        "profile": tags.get("profile"),
        "configuration": configuration,
        "runs": {
            "zenml_run_name": tags.get("zenml_run_name"),
            "zenml_run_id": tags.get("zenml_run_id"),
            "mlflow_training_run": mv.run_id,
        },
        "metrics": {k.removeprefix("metric."): float(v) for k, v in sorted(tags.items()) if k.startswith("metric.")},
        # every cohort the version was scored on after registration (`liverlesion evaluate --model`)
        "evaluations": external_evaluations_from_tags(tags),
        "data": data_lineage(root, data_version),
        "split": split_lineage(mv.run_id, tags.get("split_manifest_hash", ""))
        | {"recorded_hash": tags.get("split_manifest_hash")},
        "workspace": workspace(root, data_version),
    }


def render(report: dict[str, Any]) -> str:
    """The audit as text for a person."""
    out = io.StringIO()

    def line(text: str = "") -> None:
        out.write(text + "\n")

    decision, code, data, split, ws = (
        report["decision"],
        report["code"],
        report["data"],
        report["split"],
        report["workspace"],
    )
    line(f"{report['model']} v{report['version']}  aliases: {', '.join(report['aliases']) or 'none'}")
    line(
        f"  decision: {decision['outcome']} by {decision['by']} at {decision['at']} ({decision['job']}): "
        f"{decision['reason']}"
    )
    line(
        f"  code: git {code['git_commit']}"
        + (" (DIRTY work tree: uncommitted changes)" if code["git_dirty"] == "true" else "")
        + f", {code['code_version']}"
    )
    line(f"  fingerprint: {report['fingerprint']}  profile: {report['profile']}")
    train = report["configuration"].get("train", {})
    line(
        "  training settings: "
        + ", ".join(
            f"{k}={train[k]}"
            for k in ("backbone", "weights", "epochs", "batch_size", "learning_rate", "seed")
            if k in train
        )
    )
    line(
        f"  runs: ZenML {report['runs']['zenml_run_name']}, MLflow training run {report['runs']['mlflow_training_run']}"
    )
    evaluations = report.get("evaluations") or []
    line(f"  evaluations on other cohorts: {len(evaluations) or 'none'}")
    for e in evaluations:
        m = e["metrics"]
        shown = ", ".join(
            f"{name} {m[name]:.3f}" if m[name] == m[name] else f"{name} n/a"
            for name in ("accuracy", "roc_auc", "recall", "specificity", "brier", "ece")
            if name in m
        )
        line(
            f"    {e['at'] or '?'} cohort {e['cohort']}: {e['lesions']} lesions of {e['patients']} patient(s); "
            f"{shown} (MLflow run {e['run']})"
        )
    line(f"  data version: {data['version']}")
    if data["kind"] == "external":
        line(f"    {data['note']}")
    elif "cache" in data:
        line(f"    DVC cache: {data['cache']}")
        line(f"    DVC remote '{data.get('remote_name')}' ({data.get('remote_location')}): {data['remote']}")
    if data.get("problem"):
        line(f"    !! {data['problem']}")
    if split.get("available"):
        check = "matches" if split["matches_recorded_hash"] else "DOES NOT MATCH"
        line(f"  split manifest {split['manifest_hash'][:12]} ({check} the recorded hash):")
        for name, entry in split["sets"].items():
            keys = entry["patients"]
            shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
            line(
                f"    {name:<5} {len(keys):3d} patients, {entry['lesions']:3d} lesions "
                f"({entry['cyst']} cyst, {entry['metastasis']} metastasis): {shown}"
            )
    else:
        line(f"  split manifest: {split.get('problem')}")
    line(f"  workspace: data.dvc holds {ws['data_version']}")
    if ws.get("unversioned_changes"):
        line(
            "    note: data/ holds changes not yet versioned (`liverlesion data` versions them); "
            "compared here: data.dvc"
        )
    if ws["same_data"]:
        line("    same data as this version")
    elif "changes" in ws:
        changes = ws["changes"]
        line(
            f"    differs from this version's data: {len(changes['added'])} case(s) added, "
            f"{len(changes['removed'])} removed, {len(changes['changed'])} changed"
        )
        for key, label in (("added", "added"), ("removed", "removed")):
            if changes[key]:
                line(f"    {label}: {', '.join(changes[key])}")
        for entry in changes["changed"]:
            line(f"    changed: {entry['case_id']} ({', '.join(entry['what'])})")
        if changes.get("other_files"):
            line(f"    other files changed: {', '.join(changes['other_files'])}")
    elif ws.get("problem"):
        line(f"    {ws['problem']}")
    return out.getvalue().rstrip("\n")


class RestoreError(RuntimeError):
    """A version's data cannot be restored: outside DVC, gone from the cache and remote, or not its hash."""


def restore_data(report: dict[str, Any], root: Path, dest: Path) -> dict[str, str]:
    """Materialise the exact data a version was trained on (``report``: ``audit``'s) in the new folder ``dest``,
    from the DVC cache or remote, every file's md5 and the listing's hash checked.

    Raises:
        RestoreError: naming the version and why.
    """
    data_version = report["data"]["version"]
    if report["data"]["kind"] != "dvc":
        raise RestoreError(
            f"v{report['version']} was trained on {data_version}, a folder outside DVC: nothing to restore"
        )
    try:
        verified = dvcobjects.restore(root, data_version, dest, remote=report["data"].get("remote_name"))
    except (FileExistsError, ValueError, dvcobjects.DvcObjectsError) as err:
        raise RestoreError(f"cannot restore the data of v{report['version']}: {err}") from None
    return {"path": str(dest), "verified_version": verified}
