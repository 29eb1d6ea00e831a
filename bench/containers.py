"""Figures of the cluster path on one machine: the step image's size and build time (cold, then cached), and the
tiny DAG run step by step in containers (the containers stack) against the same run on the local orchestrator.

Cold means no image and no build cache: the images this bench names and Docker's build cache are removed first
(``--keep-base`` keeps the debootstrapped base and times only the step image). Each run is a fresh project (the
tests' tiny profile, nothing cached), alternating containers and local so the machine's noise falls on both; the
containers run goes to a team MLflow server (``liverlesion server``) and moto's S3 server, started here; the local
run to its own SQLite store, as ``make run`` does. Needs a Docker daemon, debootstrap and root.

    .venv/bin/python bench/containers.py [--variants cpu gpu] [--repeats 2] [--keep-base]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from integration_support import make_project  # noqa: E402

from liverlesion_ops import team_server  # noqa: E402
from liverlesion_ops.kubeflow import image  # noqa: E402

LIVERLESION = str(Path(sys.executable).with_name("liverlesion"))


def docker(*args: str) -> str:
    return subprocess.run([image.docker(), *args], capture_output=True, text=True, check=False).stdout


def build(variant: str) -> dict:
    done = subprocess.run(
        [LIVERLESION, "stack", "image", "--variant", variant, "--local-base", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(f"stack image --variant {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def images(variants: list[str], keep_base: bool) -> None:
    for variant in variants:
        docker("rmi", "-f", f"{image.REPOSITORY}:{variant}")
    if not keep_base:
        docker("rmi", "-f", image.LOCAL_BASE)
    docker("builder", "prune", "-af")
    for variant in variants:
        cold = build(variant)
        cached = build(variant)
        print(
            f"{variant}: {cold['size_mb'] / 1000:.2f} GB; cold {cold['build_s'] + cold['base_s']:.0f} s "
            f"(base {cold['base_s']:.0f} s, image {cold['build_s']:.0f} s); cached {cached['build_s']:.1f} s",
            flush=True,
        )


class Services:
    """A team MLflow server with one editor, and moto's S3 server with a bucket and a key."""

    def __init__(self, work: Path):
        import boto3
        from moto.server import ThreadedMotoServer

        self.admin = {"MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_hex(12)}
        self.password = secrets.token_hex(12)
        self.data = work / "team"
        self.port = team_server.free_port("127.0.0.1")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LIVERLESION_"))}
        self.script(base, "start", "--port", str(self.port), "--workers", "1")
        self.script(base, "add-user", "bench", "--role", "editor", MLFLOW_NEW_USER_PASSWORD=self.password)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        keys = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **keys).create_bucket(Bucket="bench")

    def script(self, base: dict, *args: str, **more: str) -> None:
        done = subprocess.run(
            [LIVERLESION, "server", *args, "--data", str(self.data)],
            env={**base, **self.admin, **more},
            capture_output=True,
            text=True,
            cwd=self.data.parent,
        )
        if done.returncode != 0:
            raise SystemExit(f"server {args[0]} failed:\n{done.stderr[-2000:]}")

    def stop(self) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LIVERLESION_"))}
        self.script(base, "stop")
        self.moto.stop()


def run(root: Path, env: dict, *args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([LIVERLESION, *args], cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"liverlesion {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds


def runs(repeats: int, work: Path) -> None:
    services = Services(work)
    timings: dict[str, list[float]] = {"containers": [], "local": []}
    try:
        for k in range(repeats):
            root, env = make_project(work / f"containers-{k}")
            env.update(
                MLFLOW_TRACKING_URI=f"http://127.0.0.1:{services.port}",
                MLFLOW_TRACKING_USERNAME="bench",
                MLFLOW_TRACKING_PASSWORD=services.password,
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
            )
            run(root, env, "stack", "register-containers", "--artifact-store", f"s3://bench/zenml-{k}",
                "--s3-endpoint", services.endpoint, "--mlflow-uri", env["MLFLOW_TRACKING_URI"],
                "--image", f"{image.REPOSITORY}:cpu", "--mount", str(root / "data"))  # fmt: skip
            tiny = ("run", "--profile", "tiny", "--set", f"register.model_name=bench-{k}")  # a model of its own
            timings["containers"].append(run(root, env, *tiny))
            local_root, local_env = make_project(work / f"local-{k}")
            timings["local"].append(run(local_root, local_env, "run", "--profile", "tiny"))
            print(f"run {k + 1}: containers {timings['containers'][-1]:.0f} s, local {timings['local'][-1]:.0f} s",
                  flush=True)  # fmt: skip
    finally:
        services.stop()
    containers, local = statistics.median(timings["containers"]), statistics.median(timings["local"])
    print(
        f"`liverlesion run --profile tiny` (whole command, cohort generated, fresh project): containers "
        f"{containers:.0f} s, local orchestrator {local:.0f} s (medians of {repeats}); ratio {containers / local:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["cpu"], choices=sorted(image.VARIANTS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep-base", action="store_true")
    parser.add_argument("--no-build", action="store_true", help="time only the runs (the CPU image must exist)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"commit {commit.stdout.strip()}; docker {docker('version', '--format', '{{.Server.Version}}').strip()}")
    if not args.no_build:
        images(args.variants, args.keep_base)
    with tempfile.TemporaryDirectory(prefix="bench-containers-") as tmp:
        runs(args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
