"""Ingestion, segmentation and patch extraction over real NIfTI files of a tiny phantom cohort."""

import shutil

import numpy as np
import pandas as pd
import pytest

from liverlesion.imaging import affine_from_spacing, load_nifti, save_nifti
from liverlesion.ingestion import CohortError, extract_cohort_patches, ingest_cases, load_case, segment_cases
from liverlesion.patches import lesion_patches
from liverlesion.phantom import CohortSpec, generate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate_cohort(CohortSpec(seed=3, n_patients=3, n_lesions=7, size_scale=0.4),
                           tmp_path_factory.mktemp("c") / "data")


def test_ingest_records_geometry_and_version(cohort):
    cases = ingest_cases(cohort, "md5-abc").cases
    assert len(cases) == 3 and (cases["data_version"] == "md5-abc").all()
    assert (cases["orientation"] == "RAS").all()
    row = cases.iloc[0]
    image, meta = load_nifti(row.image_path)
    assert (row.shape_0, row.shape_1, row.shape_2) == image.shape
    assert row.spacing_2 == pytest.approx(meta.spacing[2])
    assert row.hu_min >= -1024 and row.hu_max > 100


def test_cut_patches_equal_patches_from_the_whole_volume(cohort):
    cases = ingest_cases(cohort, "v").cases
    lesions = segment_cases(cases)
    assert len(lesions) == 7 and set(lesions["label"]) == {0, 1}
    patches, index = extract_cohort_patches(cases, lesions, 4.0, (96, 80), None, True)
    assert patches.shape == (7, 96, 80, 3) and index["row"].tolist() == list(range(7))
    for case in cases.itertuples(index=False):
        image, instances, spacing, _ = load_case(case)
        for lesion in lesions[lesions["case_id"] == case.case_id].itertuples(index=False):
            whole, info = lesion_patches(image, instances == lesion.instance, spacing, 4.0, (96, 80), None, True)
            row = index[index["lesion_id"] == lesion.lesion_id].iloc[0]
            np.testing.assert_allclose(patches[row["row"]], whole, atol=1e-5)
            assert (row["main_axis"], row["main_slice"], row["center_0"], row["center_1"], row["center_2"]) == (
                info.main_axis, info.main_slice, info.center_0, info.center_1, info.center_2)


def test_missing_table_and_columns(tmp_path):
    with pytest.raises(CohortError, match="no cases.csv"):
        ingest_cases(tmp_path, "v")
    pd.DataFrame({"patient_key": ["p"], "case_id": ["c"]}).to_csv(tmp_path / "cases.csv", index=False)
    with pytest.raises(CohortError, match=r"missing column\(s\) \['image', 'mask'\]"):
        ingest_cases(tmp_path, "v")


def test_broken_cases_are_all_named(cohort, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cohort, data)
    cases = pd.read_csv(data / "cases.csv")
    first, second = cases["case_id"].iloc[0], cases["case_id"].iloc[1]
    (data / cases["image"].iloc[0]).unlink()
    save_nifti(np.zeros((4, 4, 4), np.uint8), affine_from_spacing((1, 1, 1)), data / cases["mask"].iloc[1])
    with pytest.raises(CohortError) as err:
        ingest_cases(data, "v")
    message = str(err.value)
    assert "2 case(s)" in message
    assert f"case {first}: " in message and "no such file" in message
    assert f"case {second}: mask grid (4, 4, 4) differs" in message


def test_a_case_without_lesions_is_an_error(cohort, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cohort, data)
    row = pd.read_csv(data / "cases.csv").iloc[0]
    mask, meta = load_nifti(data / row["mask"])
    save_nifti(np.zeros_like(mask), meta.affine, data / row["mask"])
    with pytest.raises(CohortError, match=f"case {row['case_id']}: its mask holds no lesion"):
        ingest_cases(data, "v")
