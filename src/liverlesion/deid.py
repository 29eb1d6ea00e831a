"""De-identification at the door: pseudonymous keys from a keyed hash, and what the import records.

Nothing of a source's header travels past the importers: a case in the cohort folder is its voxels
(Hounsfield units) and its geometry (spacing, axis directions, position in the scanner's frame),
written into a fresh NIfTI header. Names, ids, dates, accession numbers, institutions, devices,
descriptions and every UID stay behind. That is DICOM PS3.15 Annex E's Basic Application
Confidentiality Profile (Table E.1-1 removes or replaces each of them) by the strictest of its
options, keeping none of them, with the Clean Descriptors option (no free text survives) and no
retained dates; images that declare burned-in annotation are refused by the DICOM reader.

Patients and cases are linked across imports by pseudonyms: a keyed hash (HMAC-SHA256) of the
source identifier with a secret held by the data custodian, from the environment. The same patient
and the same secret give the same key; without the secret a key cannot be reversed or recomputed,
and without a secret there is no import.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from liverlesion.contract import ContractError

SECRET_ENV = "LIVERLESION_PSEUDONYM_SECRET"
#: shorter secrets can be guessed by brute force over a list of medical record numbers
MIN_SECRET_LENGTH = 16
#: sixteen spaces, or `a` sixteen times, are long enough and guessed at once; 16 random hex digits hold 10 distinct
MIN_SECRET_DISTINCT = 6
#: hex digits of the secret's check value recorded in ``cohort.json``
SECRET_CHECK_HEX = 16
PATIENT_KEY_PREFIX = "P"
#: hex digits of the HMAC kept: 64 bits, a clash among a million patients has odds of ~3e-8
PATIENT_KEY_HEX = 16
CASE_KEY_HEX = 8

#: DICOM PS3.16 CID 7050 codes of what was done, recorded with every import (``cohort.json``)
DEIDENTIFICATION_METHOD_CODES = (
    ("113100", "DCM", "Basic Application Confidentiality Profile"),
    ("113105", "DCM", "Clean Descriptors Option"),
)
DEIDENTIFICATION_METHOD = (
    "liverlesion import: voxels and geometry only, into new NIfTI headers; patient and case keys are "
    "HMAC-SHA256 pseudonyms; PS3.15 Annex E basic profile, nothing of Table E.1-1 retained"
)


class MissingSecretError(ContractError):
    """No pseudonymisation secret in the environment: no import."""


@dataclass(frozen=True)
class Pseudonymiser:
    """Keyed-hash pseudonyms for patients and cases (never stored: only the keys it makes are)."""

    secret: bytes

    def _digest(self, kind: str, value: str) -> str:
        return hmac.new(self.secret, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()

    def check_value(self) -> str:
        """What ``cohort.json`` records of the secret: a keyed hash of a constant, which says whether two imports
        used the same secret and nothing of the secret itself."""
        return self._digest("secret-check", "liverlesion")[:SECRET_CHECK_HEX]

    def patient_key(self, source_patient: str) -> str:
        """The patient's pseudonymous key, e.g. ``P3f2a9c0d1e4b5a67``.

        Raises:
            ContractError: an empty source identifier (two such patients would merge).
        """
        source_patient = str(source_patient).strip()
        if not source_patient:
            raise ContractError("a case has no patient identifier to pseudonymise (empty PatientID or name)")
        return PATIENT_KEY_PREFIX + self._digest("patient", source_patient)[:PATIENT_KEY_HEX]

    def case_id(self, patient_key: str, source_case: str) -> str:
        """The case's id: its patient's key and a keyed hash of the source case (series, file)."""
        return f"{patient_key}-{self._digest('case', str(source_case))[:CASE_KEY_HEX]}"


def pseudonymiser_from_env(environ: dict[str, str] | None = None) -> Pseudonymiser:
    """The pseudonymiser keyed by ``$LIVERLESION_PSEUDONYM_SECRET``.

    Raises:
        MissingSecretError: the variable is unset or too short, saying how to set it.
    """
    secret = (environ if environ is not None else os.environ).get(SECRET_ENV, "")
    problem = None
    if not secret:
        problem = "is not set"
    elif len(secret) < MIN_SECRET_LENGTH:
        problem = f"is shorter than {MIN_SECRET_LENGTH} characters"
    elif len(set(secret.strip())) < MIN_SECRET_DISTINCT:
        problem = f"has fewer than {MIN_SECRET_DISTINCT} distinct characters (a guessable secret)"
    if problem:
        raise MissingSecretError(
            f"{SECRET_ENV} {problem}: patient keys are keyed-hash pseudonyms and there is no import without the "
            f"secret. Keep one secret per data custodian, outside git (e.g. `export {SECRET_ENV}=$(cat "
            "/secure/liverlesion.key)`): the same secret gives the same patient the same key in every import"
        )
    return Pseudonymiser(secret.encode())


def deidentification_record() -> dict:
    """What ``cohort.json`` says about de-identification (the DICOM attributes' names and values)."""
    return {
        "PatientIdentityRemoved": "YES",
        "DeidentificationMethod": DEIDENTIFICATION_METHOD,
        "DeidentificationMethodCodeSequence": [
            {"CodeValue": value, "CodingSchemeDesignator": scheme, "CodeMeaning": meaning}
            for value, scheme, meaning in DEIDENTIFICATION_METHOD_CODES
        ],
        "pseudonyms": f"HMAC-SHA256 with the secret in ${SECRET_ENV}",
    }
