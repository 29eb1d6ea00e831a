"""Reading cohort versions back from a real DVC cache and local remote (no mocks)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from liverlesion_ops.dvcobjects import (
    DataNotFound,
    RemoteUnavailable,
    VerificationError,
    case_changes,
    holdings,
    manifest,
    read_file,
    restore,
    tree_hash,
)

CASES_A = (
    "patient_key,case_id,image,mask\np1,c1,images/c1.nii.gz,masks/c1.nii.gz\n"
    "p2,c2,images/c2.nii.gz,masks/c2.nii.gz\np3,c3,images/c3.nii.gz,masks/c3.nii.gz\n"
)
TYPES_A = "case_id,lesion,type\nc1,1,cyst\nc2,1,hcc\nc3,1,metastasis\nc3,2,cyst\n"
CASES_B = (
    "patient_key,case_id,image,mask\np1,c1,images/c1.nii.gz,masks/c1.nii.gz\n"
    "p2,c2,images/c2.nii.gz,masks/c2.nii.gz\np4,c4,images/c4.nii.gz,masks/c4.nii.gz\n"
)
TYPES_B = "case_id,lesion,type\nc1,1,cyst\nc2,1,hcc\nc4,1,hemangioma\n"


def dvc(root: Path, *args: str) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stderr or done.stdout}"


def version(root: Path) -> str:
    return yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def add_and_push(root: Path) -> str:
    """``dvc add data`` and push it: the new data version."""
    dvc(root, "add", "data")
    dvc(root, "push", "-r", "local")
    return version(root)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project with data version A (cases c1-c3) and B (c3 removed, c4 added, c2's mask changed)."""
    base = tmp_path_factory.mktemp("dvcobjects")
    root = base / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    # relative to the working directory; DVC stores it relative to .dvc/, so copies of `base` work too
    dvc(root, "remote", "add", "--local", "--force", "local", "../remote")
    dvc(root, "config", "--local", "core.site_cache_dir", str(base / "site-cache"))
    data = root / "data"
    for case in ("c1", "c2", "c3"):
        write(data / "images" / f"{case}.nii.gz", f"image of {case}".encode() * 10)
        write(data / "masks" / f"{case}.nii.gz", f"mask of {case}".encode() * 10)
    write(data / "cases.csv", CASES_A)
    write(data / "lesion_types.csv", TYPES_A)
    write(data / "cohort.json", '{"cohort": "A"}')
    files_a, version_a = files_of(data), add_and_push(root)

    write(data / "masks" / "c2.nii.gz", b"a corrected mask of c2")
    (data / "images" / "c3.nii.gz").unlink()
    (data / "masks" / "c3.nii.gz").unlink()
    write(data / "images" / "c4.nii.gz", b"image of c4")
    write(data / "masks" / "c4.nii.gz", b"mask of c4")
    write(data / "cases.csv", CASES_B)
    write(data / "lesion_types.csv", TYPES_B)
    write(data / "cohort.json", '{"cohort": "B"}')
    files_b, version_b = files_of(data), add_and_push(root)
    assert version_a != version_b
    return {"base": base, "root": root, "A": version_a, "B": version_b, "files_A": files_a, "files_B": files_b}


def md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {path: hashlib.md5(data).hexdigest() for path, data in files.items()}


def test_manifest_lists_each_version(project):
    for name in ("A", "B"):
        listing = manifest(project["root"], project[name])
        assert listing.version == project[name] and listing.source == "cache"
        assert listing.files == md5s(project[f"files_{name}"])
        assert tree_hash(listing.files) == project[name]
    # the bare md5 (without ".dir") names the same version
    assert manifest(project["root"], project["A"].removesuffix(".dir")).files == md5s(project["files_A"])


def test_holdings_complete_in_cache_and_remote(project):
    held = holdings(project["root"], project["A"])
    assert held["files"] == len(set(md5s(project["files_A"]).values()))
    for side in ("cache", "remote"):
        assert held[side]["state"] == "complete", held[side]
        assert held[side]["present"] == held[side]["total"] == held["files"]
    assert held["remote"]["name"] == "local"


def test_holdings_without_remote_does_not_raise(project):
    held = holdings(project["root"], project["B"], remote="nowhere")
    assert held["cache"]["state"] == "complete"
    assert held["remote"]["state"] == "unavailable" and "nowhere" in held["remote"]["error"]


def test_read_file(project):
    assert read_file(project["root"], project["A"], "cases.csv") == CASES_A.encode()
    assert read_file(project["root"], project["B"], "./masks/c2.nii.gz") == b"a corrected mask of c2"


def test_case_changes(project):
    changes = case_changes(project["root"], project["A"], project["B"])
    assert changes["added"] == ["c4"]
    assert changes["removed"] == ["c3"]
    assert changes["changed"] == [{"case_id": "c2", "what": ["mask"]}]
    assert changes["tables"] == ["cases.csv", "lesion_types.csv"]
    assert changes["other_files"] == ["cohort.json"]
    assert case_changes(project["root"], project["A"], project["A"])["changed"] == []


def test_restore_reproduces_the_version(project, tmp_path):
    dest = tmp_path / "restored"
    assert restore(project["root"], project["A"], dest) == project["A"]
    assert files_of(dest) == project["files_A"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert restore(project["root"], project["B"], empty) == project["B"]
    assert files_of(empty) == project["files_B"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_restore_refuses_a_non_empty_folder(project, tmp_path):
    dest = tmp_path / "busy"
    write(dest / "keep.txt", "mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        restore(project["root"], project["A"], dest)
    assert files_of(dest) == {"keep.txt": b"mine"}


def test_from_remote_then_gone(project, tmp_path):
    """Without the cache the remote serves; without both the version is plainly not found."""
    copy = tmp_path / "copy"
    shutil.copytree(project["base"], copy, symlinks=True)
    root, remote_dir = copy / "project", copy / "remote"
    shutil.rmtree(root / ".dvc" / "cache")

    held = holdings(root, project["A"])
    assert held["cache"]["state"] == "absent" and held["remote"]["state"] == "complete"
    assert manifest(root, project["A"]).source == "remote"
    assert restore(root, project["A"], tmp_path / "from-remote") == project["A"]
    assert files_of(tmp_path / "from-remote") == project["files_A"]
    assert holdings(root, project["A"])["cache"]["state"] == "complete"  # fetched into the cache

    shutil.rmtree(root / ".dvc" / "cache")
    with pytest.raises(RemoteUnavailable, match="'nowhere'"):
        manifest(root, project["A"], remote="nowhere")

    # one file object of B lost on the remote: partly held, and restore names the file
    objects = remote_dir / "files" / "md5"
    lost = md5s(project["files_B"])["images/c4.nii.gz"]
    (objects / lost[:2] / lost[2:]).unlink()
    held = holdings(root, project["B"])
    assert held["remote"]["state"] == "partial"
    assert held["remote"]["present"] == held["files"] - 1 and held["remote"]["listing"]
    with pytest.raises(DataNotFound, match="images/c4.nii.gz"):
        restore(root, project["B"], tmp_path / "partial")
    assert not (tmp_path / "partial").exists()

    # a corrupt object on the remote is refused and left where it is
    bad = objects / lost[:2] / lost[2:]
    bad.write_bytes(b"not the image of c4")
    with pytest.raises(VerificationError, match="images/c4.nii.gz"):
        read_file(root, project["B"], "images/c4.nii.gz")
    assert bad.read_bytes() == b"not the image of c4"
    assert holdings(root, project["B"])["cache"]["present"] < held["files"]

    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(remote_dir)
    remote_dir.mkdir()
    held = holdings(root, project["B"])
    assert held["cache"]["state"] == "absent" and held["remote"]["state"] == "absent"
    assert held["files"] is None
    with pytest.raises(DataNotFound, match=f"data version {project['B']} is not available"):
        manifest(root, project["B"])
    dest = tmp_path / "gone"
    with pytest.raises(DataNotFound, match="neither the DVC cache"):
        restore(root, project["B"], dest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
