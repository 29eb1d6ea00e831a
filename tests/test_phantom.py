"""The phantom cohort: reproducible bytes, exact lesion counts, separable-but-not-trivially lesions,
plausible HU and spacing, and a spec that rejects typos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from liverlesion.contract import MASK_CYST, MASK_METASTASIS
from liverlesion.imaging import load_nifti
from liverlesion.phantom import (
    CASE_FIELDS,
    CYST_VOLUME_ML,
    GENERATOR_VERSION,
    METASTASIS_VOLUME_ML,
    ORGAN_CODES,
    SLICE_SPACINGS_MM,
    CohortSpec,
    generate_cohort,
    generate_patient,
    plan_cohort,
)
from tests.profiles import QUICK, with_changes

TINY = with_changes(QUICK.cohort, seed=7, n_patients=4, n_lesions=10, metastasis_fraction=0.5, size_scale=0.5)
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory) -> Path:
    calls = []
    out = generate_cohort(TINY, tmp_path_factory.mktemp("tiny") / "cohort", progress=lambda *a: calls.append(a))
    (out.parent / "progress.json").write_text(json.dumps(calls))
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cases(folder: Path) -> list[dict[str, str]]:
    with open(folder / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- the spec ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"n_patient": 3},  # typo: unknown key
        {"n_patients": -1},
        {"n_lesions": -5},
        {"n_patients": 0},
        {"metastasis_fraction": 1.5},
        {"size_scale": 0.0},
        {"n_patients": 10, "n_lesions": 5},  # fewer lesions than patients
        {"noise_sd_hu": (20.0, 10.0)},
    ],
)
def test_spec_rejects(bad):
    with pytest.raises(ValidationError):
        with_changes(QUICK.cohort, **bad)


def test_spec_is_frozen_and_counts_follow_rounding():
    spec = QUICK.cohort
    with pytest.raises(ValidationError):
        spec.seed = 1
    assert (spec.n_metastases, spec.n_cysts) == (115, 115)
    assert with_changes(QUICK.cohort, n_patients=3, n_lesions=7, metastasis_fraction=0.3).n_metastases == round(7 * 0.3)


# --- the cohort plan (no rendering: fast even at full size) --------------------------------------
def test_default_plan_is_shaped_like_the_paper():
    plans = plan_cohort(QUICK.cohort)
    lesions = [lesion for plan in plans for lesion in plan.lesions]
    assert len(plans) == 63 and len(lesions) == 230
    assert all(len(plan.lesions) >= 1 for plan in plans)
    codes = [{lesion.code for lesion in plan.lesions} for plan in plans]
    assert any(c == {MASK_CYST, MASK_METASTASIS} for c in codes)
    assert any(c == {MASK_CYST} for c in codes) and any(c == {MASK_METASTASIS} for c in codes)
    for code, stats in ((MASK_CYST, CYST_VOLUME_ML), (MASK_METASTASIS, METASTASIS_VOLUME_ML)):
        volumes = np.array([lesion.volume_ml for lesion in lesions if lesion.code == code])
        assert volumes.size == 115
        assert volumes.min() == pytest.approx(stats.min)
        assert volumes.max() == pytest.approx(stats.max)
        assert volumes.mean() == pytest.approx(stats.mean, rel=1e-3)
    assert len({plan.patient_key for plan in plans}) == 63


def test_plan_is_deterministic_and_seeded():
    assert plan_cohort(TINY) == plan_cohort(TINY)
    assert plan_cohort(TINY) != plan_cohort(TINY.model_copy(update={"seed": 8}))


# --- the files -----------------------------------------------------------------------------------
def test_regenerating_gives_identical_bytes_and_another_seed_does_not(tiny_cohort, tmp_path):
    again = generate_cohort(TINY, tmp_path / "again")
    first, second = _files(tiny_cohort), _files(again)
    assert sorted(first) == sorted(second)
    assert all(first[name] == second[name] for name in first), [n for n in first if first[n] != second[n]]
    other = _files(generate_cohort(TINY.model_copy(update={"seed": 8}), tmp_path / "other"))
    assert other["images/case_001.nii.gz"] != first["images/case_001.nii.gz"]


def test_layout_table_and_metadata(tiny_cohort):
    rows = _cases(tiny_cohort)
    assert tuple(rows[0]) == CASE_FIELDS
    assert [r["case_id"] for r in rows] == ["case_001", "case_002", "case_003", "case_004"]
    assert [r["patient_key"] for r in rows] == ["PHX-001", "PHX-002", "PHX-003", "PHX-004"]
    assert sum(int(r["n_lesions"]) for r in rows) == TINY.n_lesions
    for r in rows:
        assert (tiny_cohort / r["image"]).is_file() and (tiny_cohort / r["mask"]).is_file()
    text = (tiny_cohort / "cohort.json").read_text()
    meta = json.loads(text)
    assert text == json.dumps(meta, indent=2, sort_keys=True) + "\n"
    assert meta["generator_version"] == GENERATOR_VERSION
    assert meta["spec"] == TINY.model_dump(mode="json")
    assert CohortSpec.model_validate(meta["spec"]) == TINY
    assert meta["description"]
    progress = json.loads((tiny_cohort.parent / "progress.json").read_text())
    assert progress == [[i + 1, 4, f"case_00{i + 1}"] for i in range(4)]


def test_lesions_are_separate_components_with_exact_counts(tiny_cohort):
    totals = {MASK_CYST: 0, MASK_METASTASIS: 0}
    for r in _cases(tiny_cohort):
        mask, _ = load_nifti(tiny_cohort / r["mask"])
        assert mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, MASK_CYST, MASK_METASTASIS}
        found = 0
        for code in totals:
            _, n = ndimage.label(mask == code, structure=CONNECTIVITY_26)
            totals[code] += n
            found += n
        assert found == int(r["n_lesions"]) >= 1
        # lesions of either class never touch: all of them are separate components together,
        # and each stays at least two voxels from every other one
        labels, n_all = ndimage.label(mask > 0, structure=CONNECTIVITY_26)
        assert n_all == found
        for k in range(1, n_all + 1):
            near = ndimage.binary_dilation(labels == k, structure=CONNECTIVITY_26, iterations=2)
            assert set(np.unique(labels[near])) <= {0, k}
    assert totals == {MASK_CYST: TINY.n_cysts, MASK_METASTASIS: TINY.n_metastases}


def test_images_are_int16_hu_on_plausible_grids(tiny_cohort):
    for r in _cases(tiny_cohort):
        image, meta = load_nifti(tiny_cohort / r["image"])
        mask, mask_meta = load_nifti(tiny_cohort / r["mask"])
        assert image.dtype == np.int16 and image.shape == mask.shape
        assert meta.orientation == "RAS"
        np.testing.assert_allclose(meta.affine, mask_meta.affine)
        sx, sy, sz = meta.spacing
        assert sx == sy and 0.6 <= sx <= 0.9
        assert min(abs(sz - s) for s in SLICE_SPACINGS_MM) < 1e-6
        assert image.min() >= -1024 and image.max() <= 3071
        assert (image < -900).any(), "air (or lung) should be in the field of view"
        assert ((image > -150) & (image < -60)).sum() > 1000, "fat should be in the field of view"


def test_hu_of_liver_cysts_and_metastases():
    for plan in plan_cohort(TINY):
        case = generate_patient(TINY, plan)
        liver = np.median(case.image[case.liver & (case.mask == 0)])
        assert 98 <= liver <= 122
        assert 10 <= case.noise_sd_hu <= 20
        labels, n = ndimage.label(case.mask > 0, structure=CONNECTIVITY_26)
        for k in range(1, n + 1):
            lesion = labels == k
            code = int(case.mask[lesion][0])
            core = ndimage.binary_erosion(lesion, structure=CONNECTIVITY_26)
            if core.sum() < 30:
                continue  # all partial volume: blurred towards the liver, as in real scans
            mean = float(case.image[core].mean())
            if code == MASK_CYST:
                assert -10 <= mean <= 30, (plan.case_id, mean)
            else:
                assert 20 <= mean <= 100 and mean < liver - 10, (plan.case_id, mean)


def test_refuses_a_non_empty_folder_but_accepts_an_empty_one(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        generate_cohort(TINY, tmp_path / "full")
    (tmp_path / "empty").mkdir()
    spec = with_changes(QUICK.cohort, n_patients=1, n_lesions=1, size_scale=0.3)
    out = generate_cohort(spec, tmp_path / "empty")
    assert [r["n_lesions"] for r in _cases(out)] == ["1"]


def test_parallel_generation_writes_the_same_bytes(tmp_path):
    spec = with_changes(QUICK.cohort, seed=3, n_patients=2, n_lesions=3, size_scale=0.3)
    serial = _files(generate_cohort(spec, tmp_path / "serial"))
    parallel = _files(generate_cohort(spec, tmp_path / "parallel", workers=2))
    assert serial == parallel


@pytest.fixture(scope="module")
def with_organs():
    plans = plan_cohort(QUICK.cohort)
    return [generate_patient(QUICK.cohort, plans[i]) for i in (0, 7)]


def test_the_liver_has_the_neighbours_that_fool_a_segmenter(with_organs):
    for case in with_organs:
        liver = float(np.median(case.image[case.liver & (case.mask == 0)]))
        near = ndimage.distance_transform_edt(~case.liver, sampling=case.spacing)
        present = {name for name, code in ORGAN_CODES.items() if (case.organs == code).any()}
        assert present >= {"kidney", "renal_pelvis", "pancreas", "stomach", "colon", "heart", "aorta", "rib"}, present
        assert not (case.organs[case.liver] > 0).any()  # where the liver is, the liver is

        def hu(name, q, case=case):
            return float(np.percentile(case.image[case.organs == ORGAN_CODES[name]], q))

        assert hu("kidney", 90) >= liver + 40  # the cortex is brighter than the liver ...
        assert near[case.organs == ORGAN_CODES["kidney"]].min() <= 6.0  # ... and touches it, a fat plane away
        assert abs(hu("pancreas", 50) - liver) <= 25  # the pancreas at the liver's own level
        assert abs(hu("heart", 10) - liver) <= 40  # so is the heart's muscle, across the diaphragm
        assert near[case.organs == ORGAN_CODES["heart"]].min() <= 10.0
        assert hu("stomach", 5) < -800 and hu("colon", 5) < -800  # gas in the lumen
        assert hu("rib", 50) > 250


def test_organs_change_neither_the_liver_nor_the_lesions(with_organs, monkeypatch):
    import liverlesion.phantom as phantom

    monkeypatch.setattr(phantom, "_plan_organs", lambda rng, anat, grid: ([], []))
    plans = plan_cohort(QUICK.cohort)
    bare = generate_patient(QUICK.cohort, plans[0])
    case = with_organs[0]
    assert not bare.organs.any()
    np.testing.assert_array_equal(bare.liver, case.liver)
    np.testing.assert_array_equal(bare.mask, case.mask)
    assert bare.lesions == case.lesions
    inside = ndimage.binary_erosion(case.liver, iterations=3)
    # the same CT where the liver is (to the rounding of the blend: 1 HU)
    assert np.abs(bare.image[inside].astype(int) - case.image[inside]).max() <= 1
    assert (bare.image != case.image).sum() > 10_000  # and other organs around it
