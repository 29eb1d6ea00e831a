"""Read-only access to the DVC-versioned cohort folder by its version hash, for audits.

A data version is the ``.dir`` md5 that ``dvc add data`` writes to ``data.dvc`` (``3f2a….dir``; the
bare 32-hex md5 is accepted too). Its listing (the ``.dir`` object: relative path -> file md5) and
its files live as content-addressed objects in the project's DVC cache (``.dvc/cache/files/md5``)
and in a DVC remote. Everything here goes through DVC's own object databases: the cache is
``Repo.cache.local`` and the remote is ``Repo.cloud.get_remote_odb(name)``, so a remote on S3 (or
any other DVC remote) works the same way as a local folder.

Nothing here changes ``data/``, ``data.dvc`` or the remote, and no DVC repo lock is taken (the
callers run under the project's own lock). Objects missing from the cache are copied into it from
the remote (what ``dvc fetch`` does), verified against their md5 on the way in.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverlesion.contract import CASES_FILE_COLUMNS, DEFAULT_MASK_ENCODING

CASES_TABLE = "cases.csv"
LESION_TYPES_TABLE = "lesion_types.csv"
DEFAULT_REMOTE = "local"
HASH_NAME = "md5"  # DVC 3's object hash (plain md5; "md5-dos2unix" is DVC 2's legacy one)
_VERSION = re.compile(r"^([0-9a-f]{32})(\.dir)?$")
_SHOWN = 5  # how many missing paths an error message names


class DvcObjectsError(RuntimeError):
    """Reading a data version from DVC's cache or remote failed."""


class DataNotFound(DvcObjectsError):
    """The version's data is in neither the DVC cache nor the remote (e.g. removed by ``dvc gc``)."""


class RemoteUnavailable(DataNotFound):
    """The cache lacks the data and the remote could not be read (unconfigured, unreachable, ...)."""


class VerificationError(DvcObjectsError):
    """Data read from the cache or the remote does not match its md5 (corrupt object)."""


@dataclass(frozen=True)
class Manifest:
    """The file listing of one data version.

    Attributes:
        version: the version as DVC writes it in ``data.dvc`` (``<md5>.dir``).
        files: relative path (``/``-separated) -> md5 of the file's bytes.
        source: ``"cache"`` (the listing was in the DVC cache) or ``"remote"`` (fetched from it).
        location: the cache folder or the remote URL the listing was read from.
        remote: the remote's name when ``source`` is ``"remote"``, else None.
    """

    version: str
    files: dict[str, str] = field(repr=False)
    source: str
    location: str
    remote: str | None = None

    @property
    def md5(self) -> str:
        """The version without the ``.dir`` suffix."""
        return self.version.removesuffix(".dir")

    def __len__(self) -> int:
        return len(self.files)


def normalize_version(version: str) -> str:
    """``version`` as DVC writes it (``<32 hex>.dir``); with or without the suffix is accepted.

    Raises:
        ValueError: not a DVC directory md5.
    """
    match = _VERSION.match(str(version).strip().lower())
    if not match:
        raise ValueError(f"{version!r} is not a DVC data version (a 32-hex md5, optionally ending in '.dir')")
    return match.group(1) + ".dir"


def tree_hash(files: Mapping[str, str]) -> str:
    """The ``.dir`` hash DVC gives a folder whose files are ``files`` ({relative path: md5}).

    Computed by dvc_data's own ``Tree.digest()`` (md5 of the JSON listing ``dvc add`` writes).
    """
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for relpath, md5 in files.items():
        tree.add(tuple(relpath.split("/")), Meta(), HashInfo(HASH_NAME, md5))
    tree.digest()
    return tree.hash_info.value


class _Session:
    """One open DVC repo (no lock taken) with its cache and, on demand, the remote's object DB."""

    def __init__(self, root: Path | str, remote: str | None):
        from dvc.exceptions import NotDvcRepoError
        from dvc.repo import Repo

        self.root = Path(root)
        self.remote_name = remote
        try:
            self.repo = Repo(os.fspath(self.root))
        except NotDvcRepoError as exc:
            raise DvcObjectsError(f"{self.root} is not a DVC project: {exc}") from exc
        self.cache = self.repo.cache.local
        if self.cache is None:
            self.repo.close()
            raise DvcObjectsError(f"{self.root} has no local DVC cache configured")
        self._remote_odb: Any = None
        self._remote_error: str | None = None

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.repo.close()

    @property
    def remote_label(self) -> str:
        return f"remote '{self.remote_name}'" if self.remote_name else "the default remote"

    def remote_odb(self) -> Any:
        """The remote's object DB (DVC 3 layout ``files/md5``).

        Raises:
            RemoteUnavailable: the remote is not configured or cannot be set up.
        """
        if self._remote_odb is None and self._remote_error is None:
            try:
                self._remote_odb = self.repo.cloud.get_remote_odb(self.remote_name, "fetch", hash_name=HASH_NAME)
            except Exception as exc:  # noqa: BLE001 - any config/driver problem means "unavailable"
                self._remote_error = f"{type(exc).__name__}: {exc}"
        if self._remote_error is not None:
            raise RemoteUnavailable(f"{self.remote_label} could not be used: {self._remote_error}")
        return self._remote_odb

    def remote_url(self) -> str:
        odb = self.remote_odb()
        return odb.fs.unstrip_protocol(odb.path)

    def remote_has(self, oids: Iterable[str]) -> set[str]:
        """Which of ``oids`` the remote holds (existence only; nothing is downloaded).

        Raises:
            RemoteUnavailable: the remote could not be queried.
        """
        odb = self.remote_odb()
        oids = sorted(set(oids))
        if not oids:
            return set()
        try:
            # list_oids_exists asks for each object; LocalHashFileDB.oids_exist would re-hash a local
            # remote's files and delete the ones it finds corrupt, which an audit must not do.
            return set(odb.list_oids_exists(oids))
        except Exception as exc:  # noqa: BLE001 - network/credentials errors of any fsspec driver
            self._remote_error = f"{type(exc).__name__}: {exc}"
            raise RemoteUnavailable(f"{self.remote_label} could not be read: {self._remote_error}") from exc

    def fetch(self, oids: Iterable[str], version: str, names: Mapping[str, str] | None = None) -> list[str]:
        """Copy those of ``oids`` the cache lacks from the remote into the cache, verifying each md5.

        Args:
            names: oid -> a path to name in error messages.

        Returns:
            the oids that were fetched.

        Raises:
            DataNotFound: some objects are on neither side (RemoteUnavailable: the remote failed).
            VerificationError: a fetched object did not match its md5 (it is not kept).
        """
        missing = sorted({oid for oid in oids if not self.cache.exists(oid)})
        if not missing:
            return []
        names = names or {}
        try:
            odb = self.remote_odb()
            present = self.remote_has(missing)
        except RemoteUnavailable as exc:
            raise RemoteUnavailable(
                f"data version {version}: {_count(missing)} missing from the DVC cache ({self.cache.path}), and {exc}"
            ) from exc
        absent = [oid for oid in missing if oid not in present]
        if absent:
            shown = ", ".join(names.get(oid, oid) for oid in absent[:_SHOWN])
            more = f" and {len(absent) - _SHOWN} more" if len(absent) > _SHOWN else ""
            raise DataNotFound(
                f"data version {version}: {_count(absent)} in neither the DVC cache ({self.cache.path}) nor "
                f"{self.remote_label} ({self.remote_url()}): {shown}{more} (removed by `dvc gc`, or never pushed?)"
            )
        errors: dict[str, BaseException] = {}
        self.cache.add(
            [odb.oid_to_path(oid) for oid in missing],
            odb.fs,
            missing,
            verify=True,  # hashes each object once copied; a mismatch is deleted from the cache
            on_error=lambda oid, exc: errors.setdefault(oid, exc),
        )
        failed = [oid for oid in missing if not self.cache.exists(oid)]
        if failed:
            details = "; ".join(
                f"{names.get(oid, oid)}: {errors[oid]}" if oid in errors else f"{names.get(oid, oid)}: md5 mismatch"
                for oid in failed[:_SHOWN]
            )
            raise VerificationError(
                f"data version {version}: {_count(failed)} could not be fetched intact from "
                f"{self.remote_label} ({self.remote_url()}): {details}"
            )
        return missing

    def manifest(self, version: str) -> Manifest:
        """The listing of ``version`` from the cache, fetching the ``.dir`` object if the cache lacks it."""
        source, location, remote = "cache", self.cache.path, None
        if not self.cache.exists(version):
            try:
                self.fetch([version], version)
            except RemoteUnavailable as exc:
                raise RemoteUnavailable(
                    f"data version {version}: its listing is not in the DVC cache ({self.cache.path}), and "
                    f"{self.remote_label} could not be read to look for it ({self._remote_error})"
                ) from exc
            except DataNotFound as exc:
                raise DataNotFound(
                    f"data version {version} is not available: its listing is in neither the DVC cache "
                    f"({self.cache.path}) nor {self.remote_label} ({self.remote_url()}); it may have been "
                    "removed by `dvc gc` or never pushed"
                ) from exc
            source, location, remote = "remote", self.remote_url(), self.remote_name
        files = _load_listing(self.cache, version)
        return Manifest(version=version, files=files, source=source, location=location, remote=remote)

    def read(self, version: str, manifest: Manifest, relpath: str) -> bytes:
        """One file of the version, from the cache (fetched from the remote if needed), md5-checked."""
        from dvc_data.hashfile.hash import fobj_md5

        key = _relpath(relpath)
        if key not in manifest.files:
            raise DvcObjectsError(f"data version {version} has no file {key!r}")
        oid = manifest.files[key]
        self.fetch([oid], version, {oid: key})
        data = Path(self.cache.oid_to_path(oid)).read_bytes()
        if fobj_md5(io.BytesIO(data), name=HASH_NAME) != oid:
            raise VerificationError(
                f"data version {version}: the cached object of {key!r} ({self.cache.oid_to_path(oid)}) does not "
                f"match its md5 {oid}: the DVC cache is corrupt (`dvc cache` objects are read-only; "
                "delete it and fetch again)"
            )
        return data


def _count(oids: list[str]) -> str:
    return f"{len(oids)} object{'s' if len(oids) != 1 else ''}"


def _relpath(relpath: str | os.PathLike[str]) -> str:
    """A path inside the data folder in DVC's listing form (``/``-separated, no ``./``)."""
    text = os.fspath(relpath).strip().replace("\\", "/")
    return posixpath.normpath(text) if text else text


def _load_listing(odb: Any, version: str) -> dict[str, str]:
    """{relative path: md5} of the ``.dir`` object ``version`` in ``odb``, checked against its hash."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree
    from dvc_objects.errors import ObjectFormatError

    try:
        tree = Tree.load(odb, HashInfo(HASH_NAME, version))
    except ObjectFormatError as exc:
        raise VerificationError(f"data version {version}: its listing in {odb.path} is corrupt: {exc}") from exc
    files: dict[str, str] = {}
    for parts, _meta, hash_info in tree:
        if not hash_info or hash_info.name != HASH_NAME:
            raise DvcObjectsError(
                f"data version {version}: entry {'/'.join(parts)!r} has no {HASH_NAME} hash ({hash_info}); "
                "only DVC 3 data is supported"
            )
        files["/".join(parts)] = hash_info.value
    if tree_hash(files) != version:
        raise VerificationError(
            f"data version {version}: its listing in {odb.path} hashes to {tree_hash(files)}, not to the version"
        )
    return files


def manifest(root: Path | str, version: str, remote: str | None = DEFAULT_REMOTE) -> Manifest:
    """The file listing of data ``version`` of the project at ``root``.

    Read from the DVC cache's ``.dir`` object, or fetched into the cache from ``remote`` (a DVC remote
    name; None: DVC's default remote) when the cache lacks it. The listing is checked to hash to
    ``version``.

    Raises:
        ValueError: ``version`` is not a DVC directory md5.
        DataNotFound: the listing is in neither the cache nor the remote (RemoteUnavailable: the
            cache lacks it and the remote could not be read).
        VerificationError: the listing does not hash to ``version``.
    """
    version = normalize_version(version)
    with _Session(root, remote) as session:
        return session.manifest(version)


def _state(has_dir: bool, present: int | None, total: int | None) -> str:
    if total is not None and present is not None:
        if has_dir and present == total:
            return "complete"
        if not has_dir and present == 0:
            return "absent"
        return "partial"
    return "partial" if has_dir else "absent"


def _describe(state: str, has_dir: bool, present: int | None, total: int | None) -> str:
    listing = "the listing" if has_dir else "not the listing"
    files = f"{present} of {total} file objects" if total is not None else "file objects unknown (no listing anywhere)"
    return {
        "complete": f"complete: the listing and all {total} file objects",
        "absent": "not at all" if total is None else f"not at all: no listing, 0 of {total} file objects",
    }.get(state, f"partly: {listing}, {files}")


def holdings(root: Path | str, version: str, remote: str | None = DEFAULT_REMOTE) -> dict[str, Any]:
    """Whether the DVC cache and the remote hold data ``version`` completely, partly or not at all.

    Only existence is checked (no object is downloaded, hashed or changed); ``restore`` verifies
    content. Never raises for remote problems: the remote's entry then has state ``"unavailable"``.

    Returns:
        ``{"version": "<md5>.dir", "files": <distinct file objects, None if no listing is found>,
        "cache": {...}, "remote": {...}}`` where each side is ``{"state": "complete" | "partial" |
        "absent" (remote also "unavailable"), "listing": bool, "present": int | None, "total":
        int | None, "location": str, "summary": str}``; the remote's also has ``"name"`` and, when
        unavailable, ``"error"``.

    Raises:
        ValueError: ``version`` is not a DVC directory md5.
    """
    version = normalize_version(version)
    with _Session(root, remote) as session:
        cache = session.cache
        listing: dict[str, str] | None = None
        cache_dir = cache.exists(version)
        if cache_dir:
            try:
                listing = _load_listing(cache, version)
            except DvcObjectsError:
                cache_dir = False  # a corrupt listing is as good as none
        remote_info: dict[str, Any] = {"name": remote}
        remote_dir = False
        try:
            remote_info["location"] = session.remote_url()
            remote_dir = version in session.remote_has([version])
            if listing is None and remote_dir:
                listing = _load_listing(session.remote_odb(), version)  # read in place, not fetched
        except DvcObjectsError as exc:
            remote_info.update(state="unavailable", error=str(exc), listing=None, present=None, total=None)
            remote_info["summary"] = f"unavailable: {exc}"
            remote_info.setdefault("location", None)

        oids = sorted(set(listing.values())) if listing is not None else []
        total = len(oids) if listing is not None else None
        cache_present = sum(1 for oid in oids if cache.exists(oid)) if listing is not None else None
        cache_state = _state(cache_dir, cache_present, total)
        result: dict[str, Any] = {
            "version": version,
            "files": total,
            "cache": {
                "state": cache_state,
                "listing": cache_dir,
                "present": cache_present,
                "total": total,
                "location": cache.path,
                "summary": _describe(cache_state, cache_dir, cache_present, total),
            },
        }
        if remote_info.get("state") != "unavailable":
            try:
                remote_present = len(session.remote_has(oids)) if listing is not None else None
                remote_state = _state(remote_dir, remote_present, total)
                remote_info.update(
                    state=remote_state,
                    listing=remote_dir,
                    present=remote_present,
                    total=total,
                    summary=_describe(remote_state, remote_dir, remote_present, total),
                )
            except DvcObjectsError as exc:
                remote_info.update(state="unavailable", error=str(exc), listing=None, present=None, total=None)
                remote_info["summary"] = f"unavailable: {exc}"
        result["remote"] = remote_info
        return result


def read_file(root: Path | str, version: str, relpath: str, remote: str | None = DEFAULT_REMOTE) -> bytes:
    """The bytes of file ``relpath`` (relative to the data folder, e.g. ``cases.csv``) of ``version``.

    Read from the DVC cache, fetched into it from ``remote`` if needed, and checked against its md5.

    Raises:
        DvcObjectsError: the version has no such file.
        DataNotFound: the listing or the file is in neither the cache nor the remote.
        VerificationError: the data does not match its md5.
    """
    version = normalize_version(version)
    with _Session(root, remote) as session:
        return session.read(version, session.manifest(version), relpath)


def restore(root: Path | str, version: str, dest: Path | str, remote: str | None = DEFAULT_REMOTE) -> str:
    """Write exactly the files of data ``version`` into folder ``dest`` and verify them.

    Objects the cache lacks are fetched from ``remote``. The files are written into a temporary
    sibling folder, verified (every file's md5 equals the listing, no file more or less, and the
    listing recomputed from the written files hashes to ``version`` as ``dvc add`` would), and only
    then renamed to ``dest``; on any failure nothing is left at ``dest``.

    Returns:
        the verified version (``<md5>.dir``).

    Raises:
        FileExistsError: ``dest`` exists and is not an empty folder.
        DataNotFound: the listing or some files are in neither the cache nor the remote.
        VerificationError: the restored files do not reproduce ``version``.
    """
    from dvc_data.hashfile.hash import file_md5

    version = normalize_version(version)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(
            f"refusing to restore data version {version} into {dest}: it exists and is not an empty folder"
        )
    with _Session(root, remote) as session:
        listing = session.manifest(version)
        for relpath in listing.files:
            if relpath.startswith("/") or ".." in relpath.split("/"):
                raise VerificationError(f"data version {version}: unsafe path {relpath!r} in its listing")
        session.fetch(listing.files.values(), version, {md5: rel for rel, md5 in listing.files.items()})

        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.restoring-", dir=dest.parent))
        try:
            for relpath, md5 in listing.files.items():
                target = staging.joinpath(*relpath.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(session.cache.oid_to_path(md5), target)  # plain copy: not the cache's 0444 mode

            written = {
                path.relative_to(staging).as_posix(): file_md5(os.fspath(path), name=HASH_NAME)
                for path in staging.rglob("*")
                if path.is_file()
            }
            wrong = sorted(rel for rel, md5 in listing.files.items() if written.get(rel) != md5)
            extra = sorted(set(written) - set(listing.files))
            if wrong or extra:
                raise VerificationError(
                    f"data version {version}: restored files do not match the listing "
                    f"(md5 differs or missing: {wrong[:_SHOWN]}, unexpected: {extra[:_SHOWN]}); the DVC cache "
                    f"({session.cache.path}) may be corrupt"
                )
            recomputed = tree_hash(written)
            if recomputed != version:
                raise VerificationError(f"data version {version}: the restored folder hashes to {recomputed}")
            if dest.exists():
                dest.rmdir()  # empty, checked above
            staging.rename(dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return version


def _table(data: bytes, name: str, version: str, required: tuple[str, ...]) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    fields = {(f or "").strip() for f in reader.fieldnames or []}
    lacking = [column for column in required if column not in fields]
    if lacking:
        raise DvcObjectsError(f"data version {version}: {name} lacks column(s) {', '.join(lacking)}")
    return rows


def _cohort(session: _Session, version: str) -> tuple[Manifest, dict[str, dict[str, str]], dict[str, tuple]]:
    """The listing, the cases (case_id -> row) and the lesion types (case_id -> sorted rows) of a version."""
    listing = session.manifest(version)
    if CASES_TABLE not in listing.files:
        raise DvcObjectsError(f"data version {version} has no {CASES_TABLE}: not a cohort folder")
    cases: dict[str, dict[str, str]] = {}
    for row in _table(
        session.read(version, listing, CASES_TABLE), CASES_TABLE, version, ("patient_key", "case_id", "image", "mask")
    ):
        if row["case_id"] in cases:
            raise DvcObjectsError(f"data version {version}: case {row['case_id']!r} appears twice in {CASES_TABLE}")
        # the contract's fields only, with its default encoding: a column added by a later append (or an
        # empty cell) is not a change of the case
        row = {k: row.get(k, "") for k in (*CASES_FILE_COLUMNS, "mask_encoding")}
        row["mask_encoding"] = row["mask_encoding"] or DEFAULT_MASK_ENCODING
        cases[row["case_id"]] = row
    types: dict[str, list[tuple]] = {}
    if LESION_TYPES_TABLE in listing.files:
        for row in _table(
            session.read(version, listing, LESION_TYPES_TABLE),
            LESION_TYPES_TABLE,
            version,
            ("case_id", "lesion", "type"),
        ):
            types.setdefault(row["case_id"], []).append(tuple(sorted((k, v) for k, v in row.items() if k != "case_id")))
    return listing, cases, {case: tuple(sorted(rows)) for case, rows in types.items()}


def case_changes(
    root: Path | str, old_version: str, new_version: str, remote: str | None = DEFAULT_REMOTE
) -> dict[str, Any]:
    """Which cases were added, removed or changed from ``old_version`` to ``new_version``.

    Cases come from each version's ``cases.csv`` (``patient_key, case_id, image, mask``, paths
    relative to the data folder) and ``lesion_types.csv`` (``case_id, lesion, type``; optional). A case
    present in both changed when the md5 of its image or mask file differs (``"image"``, ``"mask"``),
    its lesion-type rows differ (``"lesion types"``) or its ``cases.csv`` row differs in any column,
    paths and ``mask_encoding`` included (``"record"``).

    Returns:
        ``{"old": v1, "new": v2, "added": [case ids], "removed": [...], "changed": [{"case_id": ...,
        "what": [...]}], "tables": [changed cases.csv / lesion_types.csv], "other_files": [changed,
        added or removed paths that are no case's image or mask and no table]}``, all sorted.

    Raises:
        DataNotFound: a version's listing or tables are in neither the cache nor the remote.
        DvcObjectsError: a version has no ``cases.csv`` or it lacks a column.
    """
    old_version, new_version = normalize_version(old_version), normalize_version(new_version)
    with _Session(root, remote) as session:
        old_files, old_cases, old_types = _cohort(session, old_version)
        new_files, new_cases, new_types = _cohort(session, new_version)

    def md5(listing: Manifest, path: str) -> str | None:
        return listing.files.get(_relpath(path)) if path else None

    changed = []
    for case_id in sorted(set(old_cases) & set(new_cases)):
        old, new = old_cases[case_id], new_cases[case_id]
        what = [column for column in ("image", "mask") if md5(old_files, old[column]) != md5(new_files, new[column])]
        if old_types.get(case_id, ()) != new_types.get(case_id, ()):
            what.append("lesion types")
        if old != new:
            what.append("record")
        if what:
            changed.append({"case_id": case_id, "what": what})

    case_paths = {
        _relpath(row[column])
        for cases in (old_cases, new_cases)
        for row in cases.values()
        for column in ("image", "mask")
        if row[column]
    }
    differing = {
        path
        for path in set(old_files.files) | set(new_files.files)
        if old_files.files.get(path) != new_files.files.get(path)
    }
    tables = {CASES_TABLE, LESION_TYPES_TABLE}
    return {
        "old": old_version,
        "new": new_version,
        "added": sorted(set(new_cases) - set(old_cases)),
        "removed": sorted(set(old_cases) - set(new_cases)),
        "changed": changed,
        "tables": sorted(differing & tables),
        "other_files": sorted(differing - tables - case_paths),
    }
