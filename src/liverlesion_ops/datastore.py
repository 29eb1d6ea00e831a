"""The versioned cohort: ``data/`` tracked by DVC (``data.dvc``), pushed to a DVC remote.

The remote is DVC's default remote when the user configured one the DVC way (``dvc remote add -d
team s3://bucket/path``, ``dvc remote modify team endpointurl ...``, SSH, a plain path; in
``.dvc/config``, ``.dvc/config.local`` or DVC's global config): runs push to it and pull from it and
never write its configuration. Only without one is the fallback configured: remote ``local`` (a
name reserved for it), a folder on this machine (``LIVERLESION_DVC_REMOTE``), in machine-local
config; there DVC's cache is also set to hard-link ``data/`` to the cache (``CACHE_TYPE``) unless
someone chose a ``cache.type``.

On a fresh clone ``data.dvc`` is there but ``data/`` and the DVC cache are not. ``prepare_data``
then restores the cohort from the DVC cache or remote if it can, and otherwise regenerates the
embedded default cohort from its seed (bit-identical, so its DVC hash is the one in ``data.dvc``),
and says which it did. The DVC hash is the data version every later step records. A remote that
fails (unreachable, refused credentials, lacking the data) is named in a one-line error, and
``data/`` and the DVC cache are left as they were.

Linked files: with hard links ``data/`` and ``.dvc/cache`` share each file's bytes, and DVC makes
them read-only (which does not stop root). Whatever writes into ``data/`` must therefore replace
files (write a new file, then rename it over, or delete first), never write into one in place: the
phantom writes only into an empty folder, ``save_nifti`` writes a temporary file and renames it,
``import`` stages beside ``data/`` and renames in, ``--regenerate``/``--replace`` delete ``data/``
first, and ``dvcobjects.restore`` copies into a new folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from liverlesion.parallel import usable_cpus
from liverlesion.phantom import GENERATOR_VERSION, CohortSpec, generate_cohort

DATA_FOLDER = "data"
DVC_FILE = "data.dvc"
#: the fallback remote (a folder on this machine, machine-local config): a default remote of any other name
#: is the user's, used as configured
REMOTE_NAME = "local"
COHORT_METADATA = "cohort.json"
#: DVC's ``cache.type`` set with the fallback when no one chose one: ``data/`` hard-linked to the cache (one
#: copy of the bytes for both, instead of two), a copy where a link cannot be made (another file system).
#: ``hardlink`` must come first: ``dvc add`` links new data only then. Symlinks were not chosen: they break
#: when the checkout moves and are copied as links (container builds); reflinks are not on ext4.
CACHE_TYPE = "hardlink,copy"
_LINKS = ("hardlink", "symlink")  # cache types that share the bytes with data/ (read-only there)


class DataStoreError(RuntimeError):
    """A DVC operation failed or the data folder does not match what was asked for."""


class NotACohort(DataStoreError, ValueError):
    """A folder given as a cohort holds none (a mistake of the caller's)."""


@dataclass(frozen=True)
class Remote:
    """The DVC remote runs push the cohort to and restore it from."""

    name: str
    url: str  # without any password
    fallback: bool  # True: the project's local folder (configured by runs); False: the user's default remote
    note: str = ""  # e.g. remotes are configured but none is the default

    def __str__(self) -> str:
        return f"DVC remote '{self.name}' ({self.url})"

    def describe(self) -> str:
        if self.fallback:
            text = (
                f"pushed to the local fallback DVC remote {self.url} (no default DVC remote of your own is "
                "configured; `dvc remote add -d NAME URL` shares the data)"
            )
        else:
            text = f"pushed to {self}: DVC's default remote, used as configured"
        return text + (f"\n  note: {self.note}" if self.note else "")


@dataclass(frozen=True)
class DataVersion:
    hash: str  # DVC's md5 of the data folder
    source: str  # "existing", "restored" (DVC cache/remote), "generated" (from the seed), "imported" or
    # "external" (a cohort folder outside the project, versioned by its content hash)
    committed_hash: str | None  # the hash in data.dvc before this run
    path: Path
    note: str = ""  # e.g. a cohort made by another generator version
    remote: Remote | None = None  # where it was pushed (None: not versioned by the project's DVC)

    @property
    def matches_committed(self) -> bool:
        return self.committed_hash == self.hash

    def describe(self) -> str:
        how = {
            "existing": "used the cohort already in",
            "restored": "restored the cohort from the DVC cache/remote into",
            "generated": "regenerated the embedded default cohort from its seed into",
            "imported": "imported the cohort into",
            "external": "used the cohort folder (outside the project's DVC)",
        }[self.source]
        if self.source == "external":
            return f"data: {how} {self.path} — content version {self.hash}"
        if self.committed_hash is None:
            status = f"{DVC_FILE} was new: commit it"
        elif self.matches_committed:
            status = f"matches {DVC_FILE}"
        else:
            status = (
                f"DIFFERS from the committed {DVC_FILE} ({self.committed_hash[:12]}): {DVC_FILE} updated, commit it"
            )
        note = f"\n  note: {self.note}" if self.note else ""
        pushed = f"\n  {self.remote.describe()}" if self.remote is not None else ""
        return f"data: {how} {self.path} — DVC version {self.hash} ({status}){pushed}{note}"


def _dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise DataStoreError(f"`dvc {' '.join(args)}` failed in {root}:\n{done.stderr.strip() or done.stdout.strip()}")
    return done


def dvc_hash(root: Path) -> str | None:
    """The data version recorded in ``data.dvc`` (None if absent or empty)."""
    path = Path(root) / DVC_FILE
    if not path.exists():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


def _dvc_config(root: Path):
    """DVC's configuration of the project, all levels merged (system, global, .dvc/config, .dvc/config.local)."""
    from dvc.config import Config, ConfigError

    try:
        return Config(dvc_dir=os.fspath(Path(root) / ".dvc"))
    except ConfigError as err:
        raise DataStoreError(f"the DVC configuration of {root} cannot be read: {' '.join(str(err).split())}") from None


def _public(url: str) -> str:
    """``url`` without a password (``ssh://user:secret@host/path`` -> ``ssh://user@host/path``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def user_remote(root: Path, config=None) -> Remote | None:
    """DVC's default remote if the user configured one (any name but ``local``), else None. Only reads.

    Raises:
        DataStoreError: the configuration cannot be read, or names a default remote it does not define.
    """
    config = config if config is not None else _dvc_config(root)
    name = config["core"].get("remote")
    if not name or name == REMOTE_NAME:
        return None
    if name not in config["remote"] or not config["remote"][name].get("url"):
        raise DataStoreError(
            f"DVC's default remote {name!r} is not defined (`dvc remote list` shows the remotes; "
            f"`dvc remote add -d {name} URL` defines it)"
        )
    return Remote(name, _public(str(config["remote"][name]["url"])), fallback=False)


def remote_name(root: Path) -> str | None:
    """The name of the remote runs use: the user's default remote, else ``local``; None if DVC's configuration
    cannot be read (DVC's own default then). Writes nothing: for readers such as audits."""
    try:
        found = user_remote(root)
    except DataStoreError:
        return None
    return found.name if found is not None else REMOTE_NAME


def configure_remote(root: Path, remote: Path) -> Remote:
    """The DVC remote runs push to: DVC's default remote as the user configured it, else the local fallback.

    The user's remote is used as it is: no configuration file is written. Without one, remote ``local`` is
    pointed at the folder ``remote`` in machine-local config (``.dvc/config.local``, not committed), and
    DVC's ``cache.type`` is set there to ``CACHE_TYPE`` if no configuration level sets one.

    Raises:
        DataStoreError: DVC's configuration cannot be read or written.
    """
    root = Path(root)
    config = _dvc_config(root)
    found = user_remote(root, config)
    if found is not None:
        return found
    folder = Path(remote).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    local = config.load_one("local")
    if str(local.get("remote", {}).get(REMOTE_NAME, {}).get("url", "")) != str(folder):
        _dvc(root, "remote", "add", "--local", "--force", REMOTE_NAME, str(folder))
    if not config["cache"].get("type"):
        _dvc(root, "config", "--local", "cache.type", CACHE_TYPE)
    others = sorted(set(config["remote"]) - {REMOTE_NAME})
    note = (
        (
            f"DVC remote(s) {', '.join(repr(o) for o in others)} configured but none is the default: runs use the "
            f"local fallback (`dvc remote default {others[0]}` makes them push there)"
        )
        if others
        else ""
    )
    return Remote(REMOTE_NAME, str(folder), fallback=True, note=note)


#: what DVC's error output says, by problem (lower case; credentials first: "failed to connect ... Forbidden")
_PROBLEMS = (
    (
        "credentials",
        "refused the credentials or lacks a permission (S3: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
        "AWS_PROFILE; any remote: `dvc remote modify --local NAME ...`)",
        (
            "forbidden",
            "accessdenied",
            "access denied",
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "unable to locate credentials",
            "nocredentialserror",
            "expiredtoken",
            "invalidtoken",
            "(401)",
            "(403)",
            "permission denied",
            "authentication failed",
        ),
    ),
    (
        "unreachable",
        "cannot be reached",
        (
            "could not connect",
            "connection refused",
            "connect timeout",
            "timed out",
            "name or service not known",
            "nodename nor servname",
            "name resolution",
            "no route to host",
            "network is unreachable",
            "connection reset",
            "endpointconnectionerror",
        ),
    ),
    ("bucket", "does not exist (no such bucket)", ("nosuchbucket", "bucket does not exist")),
    (
        "missing",
        "lacks the data",
        ("missing cache files", "neither locally nor on remote", "checkout failed", "is your cache up to date"),
    ),
)


def _remote_problem(output: str) -> tuple[str, str]:
    """(kind, one-line description) of a failed ``dvc push/pull``'s output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [
        line.removeprefix("ERROR:").strip().removeprefix("unexpected error - ")
        for line in lines
        if line.startswith("ERROR:")
    ]
    detail = (errors or lines or ["no output"])[0]
    detail = detail if len(detail) <= 240 else detail[:237] + "..."
    text = output.lower()
    for kind, what, markers in _PROBLEMS:
        if any(marker in text for marker in markers):
            if kind == "missing":
                missing = sum(1 for line in lines if line.startswith("md5: "))
                return kind, (
                    f"lacks the data ({missing or 'some'} object(s) missing: never pushed, or removed by "
                    "`dvc gc --cloud`)"
                )
            return kind, f"{what}: {detail}"
    return "other", f"failed: {detail}"


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _restore(root: Path, remote: Remote, committed: str) -> bool:
    """Check out ``data/`` (empty or absent) from the DVC cache, else pull it from ``remote``; False if the
    data is in neither (the caller regenerates it).

    Raises:
        DataStoreError: the user's remote failed for another reason than lacking the data (nothing changed).
    """
    data = root / DATA_FOLDER
    if _dvc(root, "checkout", DVC_FILE, check=False).returncode == 0 and _has_files(data):
        return True
    shutil.rmtree(data, ignore_errors=True)  # empty before: whatever is there is a failed checkout's
    done = _dvc(root, "pull", "-r", remote.name, DVC_FILE, check=False)
    if done.returncode == 0 and _has_files(data):
        return True
    shutil.rmtree(data, ignore_errors=True)
    kind, problem = _remote_problem(done.stderr + "\n" + done.stdout)
    if remote.fallback or kind == "missing":
        return False
    raise DataStoreError(
        f"{remote} {problem}; data version {committed} ({DVC_FILE}) was not restored, "
        f"{DATA_FOLDER}/ and the DVC cache are as they were"
    )


def folder_version(folder: Path) -> str:
    """The version ``dvc add`` would give ``folder`` (``<md5>.dir``), computed without DVC's cache."""
    from liverlesion_ops.dvcobjects import tree_hash

    files = {
        path.relative_to(folder).as_posix(): _digest(path, hashlib.md5()).hexdigest()
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file())
    }
    return tree_hash(files)


def _digest(path: Path, digest):
    """``digest`` updated with the bytes of ``path``, read in 4 MiB blocks."""
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest


def _check_spec(data: Path, spec: CohortSpec) -> str:
    """Refuse a synthetic cohort of another spec; return a note if another generator made it."""
    meta_path = data / COHORT_METADATA
    if not meta_path.exists():
        return ""  # not a synthetic cohort: nothing to compare
    meta = json.loads(meta_path.read_text())
    recorded = meta.get("spec")
    if recorded is not None and recorded != spec.model_dump(mode="json"):
        raise DataStoreError(
            f"{data} holds a cohort generated with {recorded}, but the profile asks for "
            f"{spec.model_dump(mode='json')}; move {data} away (it is versioned by DVC) or use a matching profile"
        )
    version = meta.get("generator_version")
    if version is not None and version != GENERATOR_VERSION:
        return (
            f"{data} was made by phantom generator {version}; this code generates {GENERATOR_VERSION} "
            "(`liverlesion data --regenerate` refreshes it)"
        )
    return ""


def prepare_data(
    root: Path,
    spec: CohortSpec,
    remote: Path,
    progress: Callable[[int, int, str], None] | None = None,
    regenerate: bool = False,
) -> DataVersion:
    """Make ``root/data`` hold the cohort, version it with DVC and push it to the remote.

    Args:
        regenerate: replace ``data/`` by a cohort generated from ``spec`` (the previous version
            stays in the DVC cache and remote).

    Raises:
        DataStoreError: DVC fails, or ``data/`` holds a synthetic cohort of another spec.
    """
    root = Path(root)
    data = root / DATA_FOLDER
    committed = dvc_hash(root)
    target = configure_remote(root, remote)
    source = "existing"
    if regenerate and data.exists():
        shutil.rmtree(data)
    if regenerate or not _has_files(data):
        source = "generated"
        if committed is not None and not regenerate and _restore(root, target, committed):
            source = "restored"
        if source == "generated":
            if data.exists():
                data.rmdir()
            generate_cohort(spec, data, progress=progress, workers=min(2, usable_cpus()))
            if committed is not None and not regenerate and not target.fallback:
                # the user's remote lacks the committed version: the seed may reproduce it (the embedded
                # default), but another cohort must not silently replace it
                made = folder_version(data)
                if made != committed:
                    shutil.rmtree(data)
                    raise DataStoreError(
                        f"{target} lacks data version {committed} ({DVC_FILE}) and the DVC cache has none of it; "
                        f"the cohort generated from the seed is another version ({made}): `dvc push -r "
                        f"{target.name}` it from a checkout that has it, or replace it with `liverlesion data "
                        "--regenerate`"
                    )
    note = _check_spec(data, spec)
    return DataVersion(
        hash=version_data(root, target), source=source, committed_hash=committed, path=data, note=note, remote=target
    )


def _relink(root: Path) -> None:
    """Link ``data/`` to the cache where DVC's cache type says so but some files are still copies: DVC 3.67's
    ``dvc add`` links a new folder, not the files added to a tracked one (``import --append``), nor a
    checkout made before ``cache.type`` was set."""
    config = _dvc_config(root)
    types = config["cache"].get("type") or []
    types = [types] if isinstance(types, str) else list(types)
    cache = Path(config["cache"].get("dir") or root / ".dvc" / "cache")
    data = root / DATA_FOLDER
    if not types or types[0] not in _LINKS or not cache.exists() or cache.stat().st_dev != data.stat().st_dev:
        return  # copies by choice, or no link possible across file systems (DVC copied)
    if any(p.stat().st_nlink == 1 for p in data.rglob("*") if p.is_file() and not p.is_symlink()):
        _dvc(root, "checkout", "--relink", DVC_FILE)


def version_data(root: Path, remote: Remote | None = None) -> str:
    """``dvc add data`` and push it to ``remote`` (default: the remote runs use, as configured before); the
    new hash.

    Raises:
        DataStoreError: DVC fails; a push that fails says which remote and why, in one line (the data
            is then versioned in ``data.dvc`` and the DVC cache, not pushed).
    """
    root = Path(root)
    if remote is None:
        config = _dvc_config(root)
        remote = user_remote(root, config) or Remote(
            REMOTE_NAME, _public(str(config["remote"].get(REMOTE_NAME, {}).get("url", "not configured"))), fallback=True
        )
    _dvc(root, "add", DATA_FOLDER)
    version = dvc_hash(root)
    if version is None:
        raise DataStoreError(f"`dvc add {DATA_FOLDER}` left no hash in {root / DVC_FILE}")
    _relink(root)
    done = _dvc(root, "push", "-r", remote.name, DVC_FILE, check=False)
    if done.returncode != 0:
        _kind, problem = _remote_problem(done.stderr + "\n" + done.stdout)
        raise DataStoreError(
            f"{remote} {problem}; data version {version} is in {DVC_FILE} and the DVC cache "
            f"but not pushed (`dvc push -r {remote.name}` once the remote works)"
        )
    return version


def content_version(folder: Path) -> str:
    """The version of a cohort folder that DVC does not track here: a SHA-256 over its files' paths
    and bytes (``tree-<hex>``), so a changed file is a new version and ZenML does not reuse a step."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        _digest(path, digest).update(b"\0")
    return "tree-" + digest.hexdigest()


def external_data(folder: Path) -> DataVersion:
    """A cohort folder chosen with ``--data`` (anywhere, also outside the checkout), by content hash.

    Raises:
        NotACohort: no cohort there.
    """
    folder = Path(folder).resolve()
    if not (folder / "cases.csv").exists():
        raise NotACohort(
            f"{folder}: no cases.csv: not a cohort folder (see the README's data contract; "
            "`liverlesion import` makes one)"
        )
    return DataVersion(hash=content_version(folder), source="external", committed_hash=None, path=folder)
