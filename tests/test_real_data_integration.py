"""Real data in, answers out: DICOM with identifying headers imported, trained on, predicted, served.

A tiny phantom cohort is written as a hospital would hand it over: one DICOM CT series per patient
(shuffled files, rescale intercept -1024, three orientations) with a DICOM-SEG of its lesions, and
patient names, ids, birth dates, accession numbers, institutions and UIDs in every header. The
test imports it with the console command into a throw-away project (real DVC, ZenML, MLflow),
trains on it, then searches every byte the run wrote for each identifying value; it predicts one
patient from the DICOM files and asks the served pyfunc model the same question over HTTP.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from dicom_fixtures import IDENTIFYING, rewrite, write_ct_series, write_seg_file
from integration_support import TINY_PROFILE, cli, make_project, mlflow_client

from liverlesion.contract import MASK_CYST
from liverlesion.deid import SECRET_ENV, Pseudonymiser
from liverlesion.imaging import load_nifti
from liverlesion.lesions import instance_map
from liverlesion.phantom import generate_cohort
from tests.profiles import QUICK, with_changes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "integration-test-custodian-secret-7f3a"
ORIENTATIONS = ("axial", "axial_flipped", "feet_first")
MODEL = TINY_PROFILE["register"]["model_name"]


def identifying(k: int) -> dict[str, str]:
    """Patient ``k``'s header values: each one distinct, so a leak of any of them is found."""
    return {
        "PatientName": f"DOE^JANE{k:02d}",
        "PatientID": f"MRN-8844{k:02d}",
        "PatientBirthDate": f"1958021{k % 10}",
        "AccessionNumber": f"ACC-5512{k:02d}",
        "InstitutionName": IDENTIFYING["InstitutionName"],
        "ReferringPhysicianName": IDENTIFYING["ReferringPhysicianName"],
    }


@pytest.fixture(scope="module")
def hospital_export(tmp_path_factory):
    """The phantom cohort as DICOM: ``<source>/patientK/ct/`` + ``seg.dcm``; and every identifying string."""
    folder = tmp_path_factory.mktemp("hospital")
    phantom = generate_cohort(with_changes(QUICK.cohort, **TINY_PROFILE["cohort"]), folder / "phantom", workers=2)
    source = folder / "export"
    secrets: set[str] = set()
    patients = []
    for k, row in enumerate(pd.read_csv(phantom / "cases.csv").itertuples(index=False)):
        hu, meta = load_nifti(phantom / row.image, dtype=np.float32)
        mask, _ = load_nifti(phantom / row.mask)
        instances, described = instance_map(mask, row.case_id, "class")
        values = identifying(k)
        files = write_ct_series(
            source / f"patient{k}" / "ct", hu, meta.spacing, orientation=ORIENTATIONS[k % 3], identifying=values, seed=k
        )
        masks = {"Liver": (hu > 60) & (hu < 200)}  # anatomy: the importer must skip it
        for d in described:  # lesion segments in the phantom's lesion order
            kind = "Cyst" if mask[instances == d["instance"]][0] == MASK_CYST else "Tumor"
            masks[f"{kind}_{d['instance']}"] = instances == d["instance"]
        seg = write_seg_file(source / f"patient{k}" / "seg.dcm", masks, files)
        for path in [*files, seg]:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            secrets |= {
                str(header.get(tag))
                for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
                if header.get(tag)
            }
        secrets |= set(values.values()) | {v.replace("^", " ") for v in values.values()}
        patients.append(
            {"folder": source / f"patient{k}", "patient_id": values["PatientID"], "phantom_case": row.case_id}
        )
    return source, secrets, patients


@pytest.fixture(scope="module")
def imported_and_trained(tmp_path_factory, hospital_export):
    source, _, _ = hospital_export
    root, env = make_project(tmp_path_factory.mktemp("project"))
    env[SECRET_ENV] = SECRET
    imported = cli(root, env, "import", str(source), "--layout", "dicom-seg", "--json")
    trained = cli(root, env, "run", "--profile", "tiny")
    return root, env, imported, trained


def test_import_writes_a_versioned_deidentified_cohort(imported_and_trained):
    root, _, imported, trained = imported_and_trained
    report = json.loads(imported.stdout)
    assert report["cases"] == 12 and report["lesions"] == 36 and report["refused"] == []
    assert any(": the liver, kept as the liver mask" in note for note in report["notes"])  # anatomy kept, said so
    assert not any("Liver" in note for note in report["notes"])  # the segment by its position, never its label
    assert report["data_version"] == yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    cohort = json.loads((root / "data" / "cohort.json").read_text())
    assert cohort["deidentification"]["PatientIdentityRemoved"] == "YES"
    assert "used the cohort already in" in trained.stdout
    version = mlflow_client(root).get_model_version_by_alias(MODEL, "champion")
    assert version.tags["data_version"] == report["data_version"]
    types = pd.read_csv(root / "data" / "lesion_types.csv")
    assert set(types["type"]) == {"cyst", "metastasis"} and len(types) == 36


def _readable(data: bytes) -> list[bytes]:
    """The bytes of a file and of what it holds compressed: gzip members, zip entries, parquet tables."""
    found = [data]
    if data[:2] == b"\x1f\x8b":
        found += _readable(gzip.decompress(data))
    elif data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                found += _readable(archive.read(name))
    elif data[:4] == b"PAR1":
        found.append(pd.read_parquet(io.BytesIO(data)).to_csv().encode())
    return found


def test_no_identifying_value_reaches_any_byte_the_run_wrote(imported_and_trained, hospital_export):
    root, _, imported, trained = imported_and_trained
    _, secrets, _ = hospital_export
    needles = sorted(s.encode() for s in secrets if len(s) >= 6)
    assert len(needles) > 100  # names, ids, dates, accession numbers, institution, thousands of UIDs
    searched = 0
    texts = [imported.stdout.encode(), imported.stderr.encode(), trained.stdout.encode(), trained.stderr.encode()]
    for path in root.rglob("*"):  # data/, .dvc/cache, the DVC remote, ZenML store and logs, MLflow, reports
        if path.is_file():
            texts += _readable(path.read_bytes())
            searched += 1
    assert searched > 100
    assert any(b"zenml" in str(p).encode() for p in root.rglob("*.db"))  # the ZenML store was searched
    for blob in texts:
        for needle in needles:
            assert needle not in blob, f"{needle!r} leaked"


def _test_patient(root: Path, patients: list[dict]) -> tuple[dict, str, pd.DataFrame]:
    """A patient of the test split: its source folder, its imported case id, evaluate's predictions."""
    reports = sorted((root / "state" / "reports").glob("training_pipeline-*"))[-1]
    evaluated = pd.read_csv(reports / "test_predictions.csv")
    pseudonyms = Pseudonymiser(SECRET.encode())
    for patient in patients:
        key = pseudonyms.patient_key(patient["patient_id"])
        mine = evaluated[evaluated["patient_key"] == key]
        if not mine.empty:
            return patient, mine["lesion_id"].iloc[0].rsplit("-L", 1)[0], mine
    raise AssertionError("no source patient maps to a test-split patient key")


def test_predict_on_dicom_matches_evaluate_and_writes_a_dicom_seg(imported_and_trained, hospital_export, tmp_path):
    from liverlesion.dicomio import read_ct_series, read_seg

    root, env, _, _ = imported_and_trained
    _, _, patients = hospital_export
    patient, case_id, evaluated = _test_patient(root, patients)
    out = tmp_path / "answer"
    done = cli(
        root,
        env,
        "predict",
        str(patient["folder"] / "ct"),
        "--mask",
        str(patient["folder"] / "seg.dcm"),
        "--model",
        MODEL,
        "--case-id",
        case_id,
        "--out",
        str(out),
    )
    answered = pd.read_csv(out / "lesions.csv")
    same = evaluated.merge(answered, on="lesion_id", suffixes=("_evaluate", "_predict"))
    assert len(same) == len(evaluated) == len(answered), done.stdout
    np.testing.assert_allclose(same["p_metastasis_predict"], same["p_metastasis_evaluate"], rtol=0, atol=1e-6)
    # the DICOM-SEG references the source series and codes every lesion by its predicted class
    series = read_ct_series(patient["folder"] / "ct")
    segments = read_seg(out / "lesion_classes.seg.dcm", series)
    labels = {label: mask.sum() for label, mask in segments.values()}
    assert set(labels) == {"cyst (predicted)", "metastasis (predicted)"}
    assert (labels["metastasis (predicted)"] > 0) == bool((answered["predicted"] == 1).any())
    assert (out / "lesion_map.png").stat().st_size > 20_000


def test_predict_answers_a_series_without_frame_of_reference_or_series_number(
    imported_and_trained, hospital_export, tmp_path
):
    """Real exports lack what the standard makes optional or what an anonymiser strips: the answer is still
    written (exit 0), the DICOM-SEG left out with a one-line note, and the case named without the series
    number it lacks."""
    import shutil

    root, env, _, _ = imported_and_trained
    _, _, patients = hospital_export
    patient, case_id, evaluated = _test_patient(root, patients)
    ct = tmp_path / "stripped"
    shutil.copytree(patient["folder"] / "ct", ct)
    rewrite(sorted(ct.iterdir()), FrameOfReferenceUID=None, SeriesNumber=None)
    out = tmp_path / "answer"
    done = cli(
        root, env, "predict", str(ct), "--mask", str(patient["folder"] / "seg.dcm"), "--model", MODEL,
        "--out", str(out), "--json",
    )  # fmt: skip
    answer = json.loads(done.stdout)
    notes = [line for line in done.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "Frame of Reference" in notes[0], done.stderr
    assert answer["notes"] == [notes[0].removeprefix("note: ")]
    assert not (out / "lesion_classes.seg.dcm").exists()
    assert {"lesions.csv", "lesions.json", "lesion_classes.nii.gz", "lesion_map.png"} <= {f.name for f in out.iterdir()}
    # named by a digest of the series UID: not "series-None", not a number the series does not have
    assert re.fullmatch(r"series-[0-9a-f]{8}", answer["case_id"]), answer["case_id"]
    answered = pd.read_csv(out / "lesions.csv")
    np.testing.assert_allclose(np.sort(answered["p_metastasis"]), np.sort(evaluated["p_metastasis"]), rtol=0, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, records: list[dict]) -> tuple[int, dict]:
    body = json.dumps({"dataframe_records": records}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_served_model_answers_over_http(imported_and_trained, hospital_export):
    root, env, _, _ = imported_and_trained
    _, _, patients = hospital_export
    _, case_id, evaluated = _test_patient(root, patients)
    cases = pd.read_csv(root / "data" / "cases.csv").set_index("case_id")
    encoded = {
        part: base64.b64encode((root / "data" / cases.loc[case_id, part]).read_bytes()).decode()
        for part in ("image", "mask")
    }
    port = _free_port()
    serve_env = {
        **env,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'state' / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "models",
            "serve",
            "-m",
            f"models:/{MODEL}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=root,
        env=serve_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the model server did not start:\n{server.stdout.read().decode()[-3000:]}"
                    ) from None
                time.sleep(1)
        status, answer = _post(
            f"http://127.0.0.1:{port}/invocations",
            [{"case_id": case_id, "image": encoded["image"], "mask": encoded["mask"], "mask_encoding": "instance"}],
        )
        assert status == 200, answer
        served = pd.DataFrame(answer["predictions"])
        same = evaluated.merge(served, on="lesion_id", suffixes=("_evaluate", "_served"))
        assert len(same) == len(evaluated) == len(served)
        np.testing.assert_allclose(same["p_metastasis_served"], same["p_metastasis_evaluate"], rtol=0, atol=1e-6)
        status, answer = _post(
            f"http://127.0.0.1:{port}/invocations",
            [{"case_id": "bad-case", "image": "not base64!", "mask": encoded["mask"]}],
        )
        assert status == 400 and "case bad-case: image is not base64" in answer["message"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
