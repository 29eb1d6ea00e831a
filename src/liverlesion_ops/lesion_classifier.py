"""The registered model as a client calls it: a CT and its lesion mask in, one row per lesion out.

An MLflow pyfunc model, logged "from code" (``mlflow.pyfunc.log_model(python_model=<this file>)``)
with the domain package shipped beside it (``code_paths``), so ``mlflow models serve`` answers a
plain HTTP request and ``liverlesion predict`` uses the very same object.

Input: a DataFrame, one row per case: ``image`` and ``mask``, each a NIfTI file (``.nii`` or
``.nii.gz`` bytes) in base64; optionally ``case_id`` and ``mask_encoding`` (``auto``, ``binary``,
``instance``, ``class``). Over HTTP::

    POST /invocations  {"dataframe_records": [{"case_id": "c1", "image": "<base64>", "mask": "<base64>"}]}

Output: one row per lesion (``liverlesion.predict.RESULT_COLUMNS``). A case that breaks the data
contract is answered with an error naming it (HTTP 400), not a traceback.
"""

from __future__ import annotations

import base64
import binascii
import json
import tempfile
import threading
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

GZIP_MAGIC = b"\x1f\x8b"
_in_flight: threading.BoundedSemaphore | None = None
_in_flight_made = threading.Lock()


def _one_case_at_a_time() -> threading.BoundedSemaphore:
    """The scoring server runs each request in a thread of its own: at most ``contract.MAX_CASES_IN_FLIGHT`` cases
    are decoded and scored at once per process, the others wait (their request bodies already in memory)."""
    global _in_flight
    with _in_flight_made:
        if _in_flight is None:
            from liverlesion import contract

            _in_flight = threading.BoundedSemaphore(contract.MAX_CASES_IN_FLIGHT)
    return _in_flight


def _nifti_file(folder: Path, name: str, encoded: str, case_id: str) -> Path:
    from liverlesion import contract

    if isinstance(encoded, str) and len(encoded) // 4 * 3 > contract.MAX_REQUEST_FILE_BYTES:  # before decoding
        raise MlflowException(
            f"case {case_id}: {name} would decode to {len(encoded) // 4 * 3:,} bytes, more than the limit of "
            f"{contract.MAX_REQUEST_FILE_BYTES:,} (contract.MAX_REQUEST_FILE_BYTES); send it as .nii.gz",
            error_code=INVALID_PARAMETER_VALUE,
        )
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise MlflowException(
            f"case {case_id}: {name} is not base64 text of a NIfTI file", error_code=INVALID_PARAMETER_VALUE
        ) from None
    path = folder / (f"{name}.nii.gz" if data[:2] == GZIP_MAGIC else f"{name}.nii")
    path.write_bytes(data)
    return path


class LesionClassifierModel(PythonModel):
    """The network, the patch settings it was trained with, its calibration and the decision threshold, as one
    model."""

    def load_context(self, context) -> None:
        from liverlesion.predict import load_predictor

        self.settings = json.loads(Path(context.artifacts["settings"]).read_text())
        self.predictor = load_predictor(self.settings, Path(context.artifacts["keras_model"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from liverlesion.contract import ContractError
        from liverlesion.imaging import load_nifti
        from liverlesion.predict import RESULT_COLUMNS

        frame = pd.DataFrame(model_input)
        missing = [c for c in ("image", "mask") if c not in frame.columns]
        if missing:
            raise MlflowException(
                f"input lacks column(s) {missing}: each row is a case with base64 NIfTI image and mask",
                error_code=INVALID_PARAMETER_VALUE,
            )
        from liverlesion import contract

        if len(frame) > contract.MAX_CASES_PER_REQUEST:
            raise MlflowException(
                f"{len(frame)} cases in one request, more than the limit of {contract.MAX_CASES_PER_REQUEST} "
                "(contract.MAX_CASES_PER_REQUEST): send them in several requests",
                error_code=INVALID_PARAMETER_VALUE,
            )
        tables = []
        for k, row in enumerate(frame.to_dict(orient="records")):
            case_id = str(row.get("case_id") or f"case{k + 1}")
            with _one_case_at_a_time(), tempfile.TemporaryDirectory(prefix="liverlesion-serve-") as tmp:
                try:
                    image, meta = load_nifti(_nifti_file(Path(tmp), "image", row["image"], case_id))
                    mask, _ = load_nifti(_nifti_file(Path(tmp), "mask", row["mask"], case_id))
                    if mask.shape != image.shape:
                        raise ContractError(
                            f"case {case_id}: mask grid {mask.shape} differs from CT grid {image.shape}"
                        )
                    result = self.predictor.predict(image, meta, mask, case_id, str(row.get("mask_encoding") or "auto"))
                except ContractError as err:
                    raise MlflowException(str(err).replace(tmp + "/", ""), error_code=INVALID_PARAMETER_VALUE) from None
            tables.append(result.results)
        return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(RESULT_COLUMNS))


mlflow.models.set_model(LesionClassifierModel())
