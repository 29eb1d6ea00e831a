"""Lineage facts recorded with every registered model: code version, data version, split hash, and the
fingerprint of what a training depends on (data version, training settings, code)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def git_commit(root: Path) -> str:
    """``HEAD``'s commit, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-able configuration."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def code_version(files: Iterable[tuple[str, Path]]) -> str:
    """A SHA-256 over the names and bytes of the training code (``(name, path)`` pairs; the caller says which
    files are training code): the same for any copy of the same code, committed or not (``code-<16 hex>``)."""
    digest = hashlib.sha256()
    for name, path in sorted(files):
        digest.update(name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return "code-" + digest.hexdigest()[:16]


def training_fingerprint(data_version: str, training_settings: dict[str, Any], code: str) -> str:
    """What a trained model depends on, as one key: a retrain with the same fingerprint would train the
    same model (``fp-<16 hex>``)."""
    return "fp-" + config_hash({"data_version": data_version, "settings": training_settings, "code": code})
