"""The step image, built here: ``liverlesion stack image``.

Two variants of ``infra/kubeflow/Dockerfile`` (``DOCKERFILE``):

- ``cpu``: the main job's lock (``requirements.lock``, TensorFlow's CPU build), Keras on TensorFlow; the image the
  containers stack runs every step in (``liverlesion stack register-containers``);
- ``gpu``: the GPU lock (``infra/kubeflow/requirements-gpu.lock``, JAX on CUDA 12), Keras on JAX; the Kubeflow
  stack's, the ``train`` step on a GPU node.

The base image is the variant's default (``DEFAULT_BASES``: Python's Debian 12 image for ``cpu``, the CUDA
runtime image for ``gpu``), one named with ``--base``, or,
with ``--local-base``, one made here where no image registry can be reached: ``debootstrap --variant=minbase`` of
Debian 12 from Debian's package archive, with Python 3.11, the CA certificates and this environment's ``uv``
(placed at ``/uv`` and ``/uvx`` so that the same image is the Dockerfile's ``UV_IMAGE``), imported with
``docker import``. It is made once and kept under its tag (``--rebuild-base`` makes it again).

The build runs BuildKit (``DOCKER_BUILDKIT=1``, the Dockerfile's ``RUN --mount=type=secret``): a CA bundle
(``--ca-bundle``, default: ``$SSL_CERT_FILE``, where a proxy inspects TLS) is given as the build secret ``ca``,
mounted only while the locked requirements download, never written to a layer. The build uses the host's
network (``--network host``): a proxy on loopback is reached as here. Layers are cached by Docker: a second build
with an unchanged lock reinstalls nothing. ``$LIVERLESION_DOCKER`` names the docker client (default ``docker``)
for a machine whose first ``docker`` cannot run BuildKit (a client of 23 or later without its buildx plug-in).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from liverlesion.lineage import git_commit

#: the step image, and what its build context holds, relative to a checkout
DOCKERFILE = Path("infra/kubeflow/Dockerfile")
DOCKERIGNORE = Path("infra/kubeflow/Dockerfile.dockerignore")
DOCKER_ENV = "LIVERLESION_DOCKER"
#: what each variant installs and runs on (build arguments of the Dockerfile)
VARIANTS = {
    "cpu": {"LOCK": "requirements.lock", "KERAS_BACKEND": "tensorflow"},
    "gpu": {"LOCK": "infra/kubeflow/requirements-gpu.lock", "KERAS_BACKEND": "jax"},
}
#: each variant's base where the image registries are reached and none is named: Python 3.11 on Debian 12 (the
#: Docker Hub image) for the CPU; the CUDA runtime, the Dockerfile's default, for the GPU
DEFAULT_BASES = {"cpu": "python:3.11-slim-bookworm", "gpu": "nvidia/cuda:12.9.1-cudnn-runtime-ubuntu22.04"}
REPOSITORY = "liverlesion-step"
LOCAL_BASE = "liverlesion-base:bookworm"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
#: Python 3.11 (Debian 12's), its venv module, and the CA certificates the Dockerfile expects of a base
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BUILDKIT_MISSING = "BuildKit is enabled but the buildx component is missing"


class ImageError(RuntimeError):
    """A build that could not start or failed: one line saying what, and where to look."""


@dataclass(frozen=True)
class Built:
    tag: str
    variant: str
    base: str
    image_id: str
    size_bytes: int
    seconds: float
    base_seconds: float  # making the local base (0 where it was there already, or not asked for)


def docker() -> str:
    return os.environ.get(DOCKER_ENV) or "docker"


def _run(args: list[str], what: str, log: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    try:
        if log is None:
            done = subprocess.run(args, capture_output=True, text=True, **kwargs)
            output = done.stdout + done.stderr
        else:
            with log.open("w") as out:
                done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, text=True, **kwargs)
            output = log.read_text()
    except FileNotFoundError:
        raise ImageError(f"{what}: {args[0]} is not installed") from None
    if done.returncode != 0:
        if BUILDKIT_MISSING in output:
            raise ImageError(
                f"{what}: the docker client {args[0]} cannot run BuildKit (no buildx plug-in); install it, or set "
                f"{DOCKER_ENV} to a client that can (Debian's docker.io: /usr/bin/docker)"
            )
        last = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        where = f" (the whole output: {log})" if log is not None else ""
        raise ImageError(f"{what} failed ({done.returncode}): {last[0].strip()}{where}")
    return done


def image_exists(tag: str) -> bool:
    done = subprocess.run([docker(), "image", "inspect", tag], capture_output=True, text=True)
    return done.returncode == 0


def check_daemon() -> None:
    try:
        done = subprocess.run([docker(), "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    except FileNotFoundError:
        raise ImageError(f"no docker client ({docker()}): install Docker, or set {DOCKER_ENV}") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise ImageError("no Docker daemon answers (start dockerd, or set DOCKER_HOST)")


def make_local_base(tag: str = LOCAL_BASE, rebuild: bool = False, work: Path | None = None) -> float:
    """Make the Debian 12 base image ``tag`` with debootstrap (root only); return the seconds it took (0: kept)."""
    if image_exists(tag) and not rebuild:
        return 0.0
    if shutil.which("debootstrap") is None:
        raise ImageError("--local-base needs debootstrap (Debian's package: apt-get install debootstrap)")
    uv = Path(sys.executable).with_name("uv")  # the Makefile's pinned uv; else the first on PATH
    uv = uv if uv.is_file() else Path(shutil.which("uv") or "uv")
    if not uv.is_file():
        raise ImageError("--local-base copies this environment's uv into the base, and there is none")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="liverlesion-base-", dir=work) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            f"debootstrap of Debian {DEBIAN_SUITE}",
            log=Path(tmp) / "debootstrap.log",
        )
        for name in ("uv", "uvx"):
            source = uv.with_name(name)
            if source.is_file():
                shutil.copy2(source, rootfs / name)
        # no package lists nor downloaded packages in the image: what apt fetched is installed
        for cache in (rootfs / "var/cache/apt/archives", rootfs / "var/lib/apt/lists"):
            for entry in cache.glob("*"):
                if entry.is_file():
                    entry.unlink()
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        _run(
            [docker(), "import", "--change", 'CMD ["/bin/bash"]', str(archive), tag],
            f"docker import of the base {tag}",
        )
    return time.monotonic() - start


def checkout() -> Path:
    """The checkout to build from: the project's folder where it holds the Dockerfile (a clone), else the one
    this package was installed from (editable: a project folder made elsewhere, as the tests make theirs)."""
    import liverlesion_ops
    from liverlesion_ops import project

    candidates = []
    try:
        candidates.append(project.project_root())
    except FileNotFoundError:
        pass
    candidates.append(Path(liverlesion_ops.__file__).resolve().parents[2])
    for root in candidates:
        if (root / DOCKERFILE).is_file():
            return root
    raise ImageError(f"no checkout of the project holds {DOCKERFILE} (run it in a clone)")


def build(
    root: Path,
    variant: str,
    tag: str | None = None,
    base: str | None = None,
    local_base: bool = False,
    rebuild_base: bool = False,
    ca_bundle: Path | None = None,
    log: Path | None = None,
) -> Built:
    """Build the step image of ``variant`` from the checkout ``root``. ``ValueError``: a usage mistake;
    ``ImageError``: the build could not start or failed."""
    if variant not in VARIANTS:
        raise ValueError(f"--variant {variant!r}: one of {', '.join(VARIANTS)}")
    if base and local_base:
        raise ValueError("--base and --local-base: give one of them")
    if not (root / DOCKERFILE).is_file():
        raise ImageError(f"{root} is not a checkout of the project (no {DOCKERFILE})")
    if ca_bundle is None and os.environ.get("SSL_CERT_FILE"):
        ca_bundle = Path(os.environ["SSL_CERT_FILE"])
    if ca_bundle is not None and not ca_bundle.is_file():  # before any work: a mistake costs no build
        raise ValueError(f"--ca-bundle {ca_bundle}: no such file")
    check_daemon()
    tag = tag or f"{REPOSITORY}:{variant}"
    base_seconds = 0.0
    args = [docker(), "build", "-f", str(root / DOCKERFILE), "--network", "host", "-t", tag]
    for key, value in VARIANTS[variant].items():
        args += ["--build-arg", f"{key}={value}"]
    args += ["--build-arg", f"GIT_COMMIT={git_commit(root)}"]
    if local_base:
        base_seconds = make_local_base(LOCAL_BASE, rebuild_base)
        base = LOCAL_BASE
        args += ["--build-arg", f"UV_IMAGE={LOCAL_BASE}"]
    base = base or DEFAULT_BASES[variant]
    args += ["--build-arg", f"BASE_IMAGE={base}"]
    if ca_bundle is not None:
        args += ["--secret", f"id=ca,src={ca_bundle}"]
    start = time.monotonic()
    log = log or Path(tempfile.gettempdir()) / f"liverlesion-image-{variant}.log"
    _run([*args, str(root)], f"docker build of {tag}", log=log, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    seconds = time.monotonic() - start
    inspected = _run(
        [docker(), "image", "inspect", "--format", "{{.Id}} {{.Size}}", tag], f"docker image inspect {tag}"
    ).stdout.split()
    return Built(tag, variant, base, inspected[0], int(inspected[1]), seconds, base_seconds)
