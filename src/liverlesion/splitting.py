"""Patient-level, label-stratified, seeded train/validation/test split with a content hash.

Patients, not lesions, are the unit of independence: every lesion of a patient goes to one set.
The split is made with scikit-learn's ``StratifiedGroupKFold`` twice (test off the whole cohort,
then validation off the rest), and zero patient overlap is checked on the result.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

SETS = ("train", "val", "test")
MANIFEST_COLUMNS = ["lesion_id", "patient_key", "label", "set"]


class SplitError(ValueError):
    """The split cannot be made or is not patient-disjoint."""


def _one_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a held-out fold of about ``fraction`` of the rows (whole groups, stratified)."""
    n_splits = max(2, int(round(1.0 / fraction)))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise SplitError(f"{n_groups} patients cannot be split into folds of {fraction:.0%}: need at least {n_splits}")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held_out = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return held_out


def split_lesions(lesions: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.DataFrame:
    """Assign each lesion to ``train``, ``val`` or ``test`` by patient.

    Returns:
        The manifest: ``lesion_id, patient_key, label, set``, sorted by lesion id.

    Raises:
        SplitError: too few patients, or a set ends up without both classes.
    """
    table = lesions[["lesion_id", "patient_key", "label"]].sort_values("lesion_id").reset_index(drop=True)
    labels = table["label"].to_numpy()
    groups = table["patient_key"].to_numpy()
    sets = np.full(len(table), "train", dtype=object)
    test = _one_fold(labels, groups, test_fraction, seed)
    sets[test] = "test"
    rest = np.flatnonzero(sets == "train")
    val = rest[_one_fold(labels[rest], groups[rest], val_fraction / (1.0 - test_fraction), seed + 1)]
    sets[val] = "val"
    table["set"] = sets
    check_patient_disjoint(table)
    for name in SETS:
        present = set(table.loc[table["set"] == name, "label"])
        if len(present) < 2:
            raise SplitError(f"the {name} set holds only label(s) {sorted(present)}: too few patients of one class")
    return table[MANIFEST_COLUMNS]


def split_like_reference(
    lesions: pd.DataFrame,
    reference: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> pd.DataFrame:
    """The manifest of automatically segmented ``lesions``, on the patients the reference lesions split.

    Each patient goes where ``split_lesions`` sends it on its reference lesions (``lesion_id,
    patient_key, label``, the typed ones), so that every segmentation method is trained and tested
    on the same patients, whatever lesions it finds.

    Raises:
        SplitError: a patient with no reference lesion, or a set left without both classes.
    """
    typed = reference[reference["label"].notna()].astype({"label": np.int64})
    of_patient = split_lesions(typed, val_fraction, test_fraction, seed).groupby("patient_key")["set"].first()
    table = lesions[["lesion_id", "patient_key", "label"]].sort_values("lesion_id").reset_index(drop=True)
    unknown = sorted(set(table["patient_key"]) - set(of_patient.index))
    if unknown:
        raise SplitError(f"patient(s) {unknown[:10]} have automatic lesions but no typed reference lesion to split by")
    table["set"] = table["patient_key"].map(of_patient)
    for name in SETS:
        present = set(table.loc[table["set"] == name, "label"])
        if len(present) < 2:
            raise SplitError(
                f"the {name} set holds only label(s) {sorted(present)} among the automatic lesions: "
                "the segmentation missed every lesion of a class there"
            )
    return table[MANIFEST_COLUMNS]


def check_patient_disjoint(manifest: pd.DataFrame) -> None:
    """Raise if any patient has lesions in two sets, naming the patients."""
    sets_per_patient = manifest.groupby("patient_key")["set"].nunique()
    leaked = sets_per_patient[sets_per_patient > 1].index.tolist()
    if leaked:
        raise SplitError(f"patients in more than one set: {leaked[:10]}{' ...' if len(leaked) > 10 else ''}")


def manifest_hash(manifest: pd.DataFrame) -> str:
    """SHA-256 of the manifest's canonical CSV (sorted rows, fixed columns): its identity."""
    canonical = manifest[MANIFEST_COLUMNS].sort_values("lesion_id").to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(canonical.encode()).hexdigest()


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Lesions, patients and metastasis fraction per set."""
    grouped = manifest.groupby("set")
    summary = pd.DataFrame(
        {
            "lesions": grouped.size(),
            "patients": grouped["patient_key"].nunique(),
            "metastases": grouped["label"].sum(),
        }
    ).reindex(list(SETS))
    summary["metastasis_fraction"] = summary["metastases"] / summary["lesions"]
    return summary


def arrays_for_set(
    patches: np.ndarray, patch_index: pd.DataFrame, manifest: pd.DataFrame, name: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The patch stacks, labels and lesion ids of one set, in manifest order."""
    if name not in SETS:
        raise ValueError(f"unknown set {name!r}; one of {SETS}")
    chosen = manifest[manifest["set"] == name]
    row_of = dict(zip(patch_index["lesion_id"], patch_index["row"]))
    missing = [lid for lid in chosen["lesion_id"] if lid not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} lesion(s) of the {name} set have no patches, e.g. {missing[:3]}")
    rows = [row_of[lid] for lid in chosen["lesion_id"]]
    return patches[rows], chosen["label"].to_numpy(dtype=np.int32), chosen["lesion_id"].tolist()


def cases_in_sets(cases: pd.DataFrame, manifest: pd.DataFrame, sets: tuple[str, ...]) -> pd.DataFrame:
    """The cases (``contract.CASE_COLUMNS``) of the patients the manifest puts in ``sets``."""
    patients = set(manifest.loc[manifest["set"].isin(sets), "patient_key"])
    return cases[cases["patient_key"].isin(patients)].reset_index(drop=True)
