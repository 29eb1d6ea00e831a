"""Ingestion, segmentation and patch extraction over real NIfTI files of a tiny phantom cohort."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest

import liverlesion.imaging
import liverlesion.ingestion
from liverlesion.crops import LesionCrops
from liverlesion.imaging import affine_from_spacing, check_hu, load_nifti, save_nifti
from liverlesion.ingestion import CohortError, ingest_cases, segment_cases
from liverlesion.lesions import instance_map, lesion_instances
from liverlesion.patches import extract_cohort_patches, lesion_patches
from liverlesion.phantom import generate_cohort
from liverlesion.texture import cohort_texture_table, texture_features
from tests.profiles import QUICK, with_changes


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate_cohort(
        with_changes(QUICK.cohort, seed=3, n_patients=3, n_lesions=7, size_scale=0.4),
        tmp_path_factory.mktemp("c") / "data",
    )


def test_ingest_records_geometry_and_version(cohort):
    cases = ingest_cases(cohort, "md5-abc").cases
    assert len(cases) == 3 and (cases["data_version"] == "md5-abc").all()
    assert (cases["orientation"] == "RAS").all()
    row = cases.iloc[0]
    image, meta = load_nifti(row.image_path)
    assert (row.shape_0, row.shape_1, row.shape_2) == image.shape
    assert row.spacing_2 == pytest.approx(meta.spacing[2])
    assert row.hu_min >= -1024 and row.hu_max > 100


def whole_case(case):
    """One ingested case read whole, as the steps read it before crops: HU image, lesion numbers, spacing."""
    image, meta = load_nifti(case.image_path)
    image, _ = check_hu(image, case.case_id)
    mask, _ = load_nifti(case.mask_path)
    instances, _ = instance_map(mask, case.case_id, case.mask_encoding)
    return image, mask, instances, meta.spacing


def test_everything_cut_from_crops_equals_the_whole_volume(cohort):
    """The lesion table, the patches and the texture features from the crops are those of the whole CT."""
    ingested = ingest_cases(cohort, "v", crop_margin_mm=4.0)
    cases, crops = ingested.cases, ingested.crops
    lesions = segment_cases(cases, crops)
    assert len(lesions) == 7 and set(lesions["label"]) == {0, 1} and len(crops) == 7
    patches, index = extract_cohort_patches(lesions, crops, 4.0, (96, 80), None, True)
    assert patches.shape == (7, 96, 80, 3) and index["row"].tolist() == list(range(7))
    texture = cohort_texture_table(lesions, crops).set_index("lesion_id")
    for case in cases.itertuples(index=False):
        image, mask, instances, spacing = whole_case(case)
        ours = lesions[lesions["case_id"] == case.case_id].reset_index(drop=True)
        whole_table = lesion_instances(mask, image, spacing, case.case_id, case.patient_key, case.mask_encoding)
        pd.testing.assert_frame_equal(ours, whole_table)
        for lesion in ours.itertuples(index=False):
            voxels = np.argwhere(instances == lesion.instance)
            assert lesion.n_voxels == len(voxels) and lesion.bbox_lo_2 == voxels[:, 2].min()
            assert lesion.mean_hu == pytest.approx(image[instances == lesion.instance].astype(np.float64).mean())
            whole, info = lesion_patches(image, instances == lesion.instance, spacing, 4.0, (96, 80), None, True)
            row = index[index["lesion_id"] == lesion.lesion_id].iloc[0]
            np.testing.assert_array_equal(patches[row["row"]], whole)
            assert (row["main_axis"], row["main_slice"], row["center_0"], row["center_1"], row["center_2"]) == (
                info.main_axis,
                info.main_slice,
                info.center_0,
                info.center_1,
                info.center_2,
            )
            assert texture.loc[lesion.lesion_id].to_dict() == texture_features(
                image, instances == lesion.instance, spacing
            )


def test_each_ct_and_mask_is_decompressed_once_by_the_data_steps(cohort, monkeypatch):
    reads = []
    real = liverlesion.imaging.load_nifti

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(liverlesion.imaging, "load_nifti", counting)
    monkeypatch.setattr(liverlesion.ingestion, "load_nifti", counting)
    ingested = ingest_cases(cohort, "v", crop_margin_mm=4.0, workers=1)
    lesions = segment_cases(ingested.cases, ingested.crops)
    extract_cohort_patches(lesions, ingested.crops, 4.0, (96, 80), None, True)
    cohort_texture_table(lesions, ingested.crops)
    files = [*ingested.cases["image_path"], *ingested.cases["mask_path"]]
    assert sorted(reads) == sorted(files)


def test_parallel_ingestion_gives_the_same_cases_and_crops(cohort):
    one = ingest_cases(cohort, "v", crop_margin_mm=2.0, workers=1)
    two = ingest_cases(cohort, "v", crop_margin_mm=2.0, workers=2)
    pd.testing.assert_frame_equal(one.cases, two.cases)
    assert list(one.crops) == list(two.crops)
    for lid, crop in one.crops.items():
        other = two.crops[lid]
        assert crop.origin == other.origin and crop.mask_label == other.mask_label
        np.testing.assert_array_equal(crop.image, other.image)
        np.testing.assert_array_equal(crop.mask, other.mask)


def test_crops_survive_their_flat_storage_and_refuse_a_smaller_margin(cohort):
    ingested = ingest_cases(cohort, "v", crop_margin_mm=1.0, workers=1)
    again = LesionCrops.from_arrays(ingested.crops.to_arrays())
    assert again.margin_mm == 1.0 and list(again) == list(ingested.crops)
    for lid, crop in ingested.crops.items():
        assert again[lid].origin == crop.origin and again[lid].spacing == crop.spacing
        np.testing.assert_array_equal(again[lid].image, crop.image)
        np.testing.assert_array_equal(again[lid].mask, crop.mask)
    lesions = segment_cases(ingested.cases, again)
    with pytest.raises(ValueError, match="crops keep 1.0 mm around each lesion, the patches need 4.0 mm"):
        extract_cohort_patches(lesions, again, 4.0, (96, 80), None, True)
    with pytest.raises(KeyError, match="no crop of lesion nope-L01"):
        again["nope-L01"]


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


def test_parallel_steps_count_the_cores_this_process_may_use_not_the_hosts():
    """``taskset`` or a container's CPU set limits a process to fewer cores than the host has (``os.cpu_count``):
    ingest, generate and import start one process or thread per usable core, never one per host core."""
    import subprocess
    import sys

    one = {min(os.sched_getaffinity(0))}
    done = subprocess.run(
        [sys.executable, "-c", "from liverlesion.parallel import usable_cpus; print(usable_cpus())"],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, one),
    )
    assert done.stdout.strip() == "1"
