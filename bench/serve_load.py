"""Figures: the served model under load on loopback, 1, 4 and 8 concurrent clients sending whole-CT-sized cases.

One phantom case of the default cohort, resampled to 512 x 512 x 120 (a real abdominal CT's size) with its
lesion mask, is sent as base64 ``.nii.gz`` to ``mlflow models serve`` of the project's champion (run ``make run``
first), the way docs/predict.md shows. For each number of clients, a bounded number of requests (``--requests``)
are sent by that many threads at once, each request waiting at most ``--timeout`` seconds: latency p50, p95 and
max, errors (anything but HTTP 200), throughput, and the server's peak memory (its processes' RSS, sampled every
0.2 s). Then one request over the model's limits (9 cases) is timed: it must be refused (HTTP 400) at once.

    .venv/bin/python bench/serve_load.py [--clients 1 4 8] [--requests 12] [--workers 1]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WHOLE_CT = (512, 512, 120)


def real_sized_case(folder: Path) -> dict:
    """One phantom case resampled to ``WHOLE_CT``, as a request row (base64 .nii.gz)."""
    import pandas as pd
    from scipy import ndimage

    from liverlesion.config import load_profile
    from liverlesion.imaging import affine_from_spacing, load_nifti, save_nifti
    from liverlesion.phantom import generate_cohort

    profile = load_profile("quick", ROOT / "configs")  # the default job's profile
    one = profile.cohort.model_copy(update={"seed": 11, "n_patients": 1, "n_lesions": 4})
    cohort = generate_cohort(one, folder / "one")
    case = pd.read_csv(cohort / "cases.csv").iloc[0]
    hu, meta = load_nifti(cohort / case["image"])
    mask, _ = load_nifti(cohort / case["mask"])
    factors = [w / s for w, s in zip(WHOLE_CT, hu.shape)]
    hu = ndimage.zoom(hu.astype(np.float32), factors, order=1)
    mask = ndimage.zoom(mask, factors, order=0)
    spacing = [s / f for s, f in zip(meta.spacing, factors)]
    affine = affine_from_spacing(spacing, tuple(meta.affine[:3, 3]))
    save_nifti(np.round(hu).astype(np.int16), affine, folder / "ct.nii.gz")
    save_nifti(mask.astype(np.int16), affine, folder / "mask.nii.gz")
    return {
        "case_id": "bench",
        "image": base64.b64encode((folder / "ct.nii.gz").read_bytes()).decode(),
        "mask": base64.b64encode((folder / "mask.nii.gz").read_bytes()).decode(),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_rss(pid: int) -> int:
    import psutil

    try:
        parent = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
    except psutil.Error:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models:/liver-lesion-classifier@champion")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT}/.liverlesion/mlflow/mlflow.db")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=12, help="requests per number of clients")
    parser.add_argument("--workers", type=int, default=1, help="mlflow models serve --workers")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a request may wait")
    args = parser.parse_args()

    import requests

    with tempfile.TemporaryDirectory() as tmp:
        row = real_sized_case(Path(tmp))
        body = json.dumps({"dataframe_records": [row]})
        port = free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": args.tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # its uvicorn
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", args.model, "--env-manager", "local"]
        command += ["-h", "127.0.0.1", "-p", str(port), "--workers", str(args.workers)]
        log = open(Path(tmp) / "server.log", "w")
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: {(Path(tmp) / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
            headers = {"Content-Type": "application/json"}
            warm = requests.post(f"{url}/invocations", data=body, headers=headers, timeout=args.timeout)
            warm.raise_for_status()
            lesions = len(warm.json()["predictions"])
            print(
                f"# mlflow models serve of {args.model}, --workers {args.workers}, on loopback; one request: a "
                f"{'x'.join(map(str, WHOLE_CT))} CT with {lesions} lesions, {len(body) / 2**20:.1f} MiB of JSON; "
                f"idle server {server_rss(server.pid) / 2**20:.0f} MiB"
            )
            print("clients  requests  errors  p50_s  p95_s  max_s  requests/s  server_peak_MiB")
            for clients in args.clients:
                peak, stop = [0], threading.Event()

                def sample(peak=peak, stop=stop) -> None:
                    while not stop.is_set():
                        peak[0] = max(peak[0], server_rss(server.pid))
                        time.sleep(0.2)

                def one(_: int) -> tuple[float, int]:
                    started = time.perf_counter()
                    try:
                        status = requests.post(
                            f"{url}/invocations", data=body, headers=headers, timeout=args.timeout
                        ).status_code
                    except requests.RequestException:
                        status = -1
                    return time.perf_counter() - started, status

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                began = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    results = list(pool.map(one, range(args.requests)))
                took = time.perf_counter() - began
                stop.set()
                sampler.join()
                latency = np.array([r[0] for r in results])
                errors = sum(r[1] != 200 for r in results)
                print(
                    f"{clients:7d}  {len(results):8d}  {errors:6d}  {np.percentile(latency, 50):5.1f}  "
                    f"{np.percentile(latency, 95):5.1f}  {latency.max():5.1f}  {len(results) / took:10.2f}  "
                    f"{peak[0] / 2**20:15.0f}"
                )
            over = json.dumps({"dataframe_records": [row] * 9})
            started = time.perf_counter()
            refused = requests.post(f"{url}/invocations", data=over, headers=headers, timeout=args.timeout)
            print(
                f"# 9 cases in one request ({len(over) / 2**20:.0f} MiB): HTTP {refused.status_code} in "
                f"{time.perf_counter() - started:.2f} s: {refused.text[:160]}"
            )
        finally:
            if server.poll() is None:
                os.killpg(server.pid, 15)
                server.wait(timeout=60)
            log.close()


if __name__ == "__main__":
    main()
