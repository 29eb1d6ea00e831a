import numpy as np
import pandas as pd
import pytest

from liverlesion.splitting import SplitError, arrays_for_set, check_patient_disjoint, manifest_hash, split_lesions


def cohort(n_patients=63, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for k in range(rng.integers(1, 7)):
            rows.append(
                {"lesion_id": f"c{p:03d}-L{k:02d}", "patient_key": f"P{p:03d}", "label": int(rng.random() < 0.5)}
            )
    return pd.DataFrame(rows)


def test_no_patient_in_two_sets_and_fractions():
    lesions = cohort()
    manifest = split_lesions(lesions, 0.2, 0.2, seed=7)
    assert manifest.groupby("patient_key")["set"].nunique().max() == 1
    share = manifest["set"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.6, abs=0.08)
    assert share["val"] == pytest.approx(0.2, abs=0.06)
    assert share["test"] == pytest.approx(0.2, abs=0.06)
    assert len(manifest) == len(lesions)


def test_label_stratified():
    lesions = cohort()
    manifest = split_lesions(lesions, 0.2, 0.2, seed=3)
    overall = lesions["label"].mean()
    for name, group in manifest.groupby("set"):
        assert group["label"].mean() == pytest.approx(overall, abs=0.12), name


def test_seeded_and_hashed():
    lesions = cohort()
    a = split_lesions(lesions, 0.2, 0.2, seed=1)
    b = split_lesions(lesions.sample(frac=1, random_state=5), 0.2, 0.2, seed=1)  # row order does not matter
    c = split_lesions(lesions, 0.2, 0.2, seed=2)
    assert manifest_hash(a) == manifest_hash(b)
    assert manifest_hash(a) != manifest_hash(c)
    assert len(manifest_hash(a)) == 64


def test_overlap_is_detected():
    manifest = pd.DataFrame(
        {"lesion_id": ["a", "b"], "patient_key": ["P1", "P1"], "label": [0, 1], "set": ["train", "test"]}
    )
    with pytest.raises(SplitError, match="P1"):
        check_patient_disjoint(manifest)


def test_too_few_patients():
    with pytest.raises(SplitError, match="patients"):
        split_lesions(cohort(n_patients=3), 0.2, 0.2, seed=2019)


def test_arrays_for_set_follow_the_manifest():
    lesions = cohort(20)
    manifest = split_lesions(lesions, 0.25, 0.25, seed=0)
    index = pd.DataFrame({"lesion_id": lesions["lesion_id"], "row": range(len(lesions))})
    patches = np.arange(len(lesions), dtype=np.float32).reshape(-1, 1, 1, 1)
    x, y, ids = arrays_for_set(patches, index, manifest, "test")
    assert ids == manifest.loc[manifest["set"] == "test", "lesion_id"].tolist()
    assert [int(v) for v in x.ravel()] == [lesions.index[lesions["lesion_id"] == i][0] for i in ids]
    assert len(y) == len(ids)
