"""The data contract (Great Expectations 1.x): a valid cohort passes; each break is reported by table and column."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from liverlesion.contract import CASE_COLUMNS, LESION_COLUMNS, PATCH_INDEX_COLUMNS
from liverlesion_ops.validation import (
    DataValidationError,
    Failure,
    ValidationReport,
    patch_statistics,
    raise_for_report,
    validate_tables,
)
from tests.profiles import QUICK, with_changes

PATCH_SHAPE = (16, 12)
RULES = QUICK.validation


def make_patches(n: int, shape: tuple[int, int] = PATCH_SHAPE, seed: int = 0) -> np.ndarray:
    """Random patches, each channel of each patch standardised (as ``patches.standardise`` does)."""
    x = np.random.default_rng(seed).normal(5.0, 3.0, size=(n, *shape, 3))
    x = (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)
    return x.astype(np.float32)


def make_tables(n_cases: int = 3, lesions_per_case: int = 2, shape: tuple[int, int] = PATCH_SHAPE):
    """A valid cohort: ``n_cases`` CTs of distinct patients, lesions alternating cyst / metastasis."""
    cases = pd.DataFrame(
        {
            "patient_key": [f"P{c:03d}" for c in range(n_cases)],
            "case_id": [f"C{c:03d}" for c in range(n_cases)],
            "image_path": [f"data/images/C{c:03d}.nii.gz" for c in range(n_cases)],
            "mask_path": [f"data/masks/C{c:03d}.nii.gz" for c in range(n_cases)],
            "mask_encoding": "class",
            "liver_mask_path": "",
            "spacing_0": 0.78,
            "spacing_1": 0.78,
            "spacing_2": 2.5,
            "shape_0": 96,
            "shape_1": 96,
            "shape_2": 40,
            "orientation": [("RAS", "LPS", "LAS")[c % 3] for c in range(n_cases)],
            "hu_min": -1024.0,
            "hu_max": 1500.0,
            "data_version": "md5:0123abcd",
        }
    )
    rows = []
    for c in range(n_cases):
        for k in range(lesions_per_case):
            label = len(rows) % 2
            rows.append(
                {
                    "lesion_id": f"C{c:03d}-L{k}",
                    "case_id": f"C{c:03d}",
                    "patient_key": f"P{c:03d}",
                    "instance": k + 1,
                    "label": label,
                    "label_name": ("cyst", "metastasis")[label],
                    "n_voxels": 120 + k,
                    "volume_ml": 0.18 + 0.01 * k,
                    "bbox_lo_0": 10,
                    "bbox_lo_1": 20,
                    "bbox_lo_2": 5,
                    "bbox_hi_0": 16,
                    "bbox_hi_1": 27,
                    "bbox_hi_2": 9,
                    "centroid_0": 12.5,
                    "centroid_1": 23.0,
                    "centroid_2": 7.0,
                    "mean_hu": (15.0, 70.0)[label],
                    "std_hu": 12.0,
                }  # fmt: skip
            )
    lesions = pd.DataFrame(rows)
    patch_index = pd.DataFrame(
        {
            "lesion_id": lesions["lesion_id"],
            "row": np.arange(len(lesions)),
            "main_axis": 2,
            "main_slice": 7,
            "center_0": 12,
            "center_1": 23,
            "center_2": 7,
            "main_area_mm2": 20.0,
            "pad_value": 42.0,
            "fit_scale": 1.0,
        }
    )
    assert (tuple(cases), tuple(lesions), tuple(patch_index)) == (CASE_COLUMNS, LESION_COLUMNS, PATCH_INDEX_COLUMNS)
    return cases, lesions, patch_index, make_patches(len(lesions), shape)


@pytest.fixture(scope="module")
def tables():
    return make_tables()


@pytest.fixture(scope="module")
def valid_report(tables) -> ValidationReport:
    validate_tables(*tables, rules=RULES, patch_shape=PATCH_SHAPE)  # the first call pays for importing GX (~5 s)
    start = time.perf_counter()
    report = validate_tables(*tables, rules=RULES, patch_shape=PATCH_SHAPE)
    print(f"validate_tables on 6 lesions: {time.perf_counter() - start:.2f} s")
    return report


def copies(tables):
    cases, lesions, patch_index, patches = tables
    return cases.copy(), lesions.copy(), patch_index.copy(), patches.copy()


# --- one break at a time: (name, what to break, the table and column that must be named) --------


def nan_volume(c, l, i, p, r):
    l.loc[2, "volume_ml"] = np.nan
    return c, l, i, p, r


def label_2(c, l, i, p, r):
    l.loc[1, "label"] = 2
    return c, l, i, p, r


def duplicated_lesion_id(c, l, i, p, r):
    l.loc[3, "lesion_id"] = l.loc[2, "lesion_id"]
    return c, l, i, p, r


def zero_spacing(c, l, i, p, r):
    c.loc[1, "spacing_2"] = 0.0
    return c, l, i, p, r


def all_metastases(c, l, i, p, r):
    l["label"], l["label_name"] = 1, "metastasis"
    return c, l, i, p, r


def nan_in_patch(c, l, i, p, r):
    p[4, 3, 5, 1] = np.nan
    return c, l, i, p, r


def unstandardised_channel(c, l, i, p, r):
    p[0, :, :, 2] = p[0, :, :, 2] * 3 + 1
    return c, l, i, p, r


def patch_index_row_missing(c, l, i, p, r):
    return c, l, i.iloc[:-1].copy(), p, r


def tensor_row_missing(c, l, i, p, r):
    return c, l, i, p[:-1].copy(), r


def wrong_patch_shape(c, l, i, p, r):
    return c, l, i, make_patches(len(l), shape=(16, 16)), r


def two_channels(c, l, i, p, r):
    return c, l, i, np.ascontiguousarray(p[..., :2]), r


def unknown_case_id(c, l, i, p, r):
    l.loc[0, "case_id"] = "C999"
    return c, l, i, p, r


def wrong_patient(c, l, i, p, r):
    l.loc[0, "patient_key"] = "P002"  # C000 belongs to P000: a patient would leak across splits
    return c, l, i, p, r


def bad_orientation(c, l, i, p, r):
    c.loc[0, "orientation"] = "RRS"
    return c, l, i, p, r


def empty_bbox(c, l, i, p, r):
    l.loc[5, "bbox_hi_1"] = l.loc[5, "bbox_lo_1"]
    return c, l, i, p, r


def missing_column(c, l, i, p, r):
    return c, l.drop(columns=["mean_hu"]), i, p, r


def float64_tensor(c, l, i, p, r):
    return c, l, i, p.astype(np.float64), r


def three_d_tensor(c, l, i, p, r):
    return c, l, i, p[..., 0], r


BREAKS = [
    (nan_volume, "lesions", "volume_ml", "expect_column_values_to_not_be_null"),
    (label_2, "lesions", "label", "expect_column_values_to_be_in_set"),
    (duplicated_lesion_id, "lesions", "lesion_id", "expect_column_values_to_be_unique"),
    (zero_spacing, "cases", "spacing_2", "expect_column_values_to_be_between"),
    (all_metastases, "lesions", "label", "expect_column_mean_to_be_between"),
    (nan_in_patch, "patch_stats", "n_nonfinite", "expect_column_values_to_be_between"),
    (unstandardised_channel, "patch_stats", "std", "expect_column_values_to_be_between"),
    (patch_index_row_missing, "patch_index", "lesion_id", "expect_column_distinct_values_to_equal_set"),
    (tensor_row_missing, "patch_index", "row", "expect_column_values_to_be_between"),
    (wrong_patch_shape, "patch_stats", "width", "expect_column_values_to_be_between"),
    (two_channels, "patch_stats", "channel", "expect_column_distinct_values_to_equal_set"),
    (unknown_case_id, "lesions", "case_id", "expect_column_values_to_be_in_set"),
    (wrong_patient, "lesions", "case_id,patient_key", "expect_column_pair_values_to_be_in_set"),
    (bad_orientation, "cases", "orientation", "expect_column_values_to_match_regex"),
    (empty_bbox, "lesions", "bbox_hi_1,bbox_lo_1", "expect_column_pair_values_a_to_be_greater_than_b"),
    (missing_column, "lesions", None, "expect_table_columns_to_match_set"),
    (float64_tensor, "patches", "dtype", "expect_tensor_dtype_to_be_float32"),
    (three_d_tensor, "patches", "shape", "expect_tensor_to_be_4d"),
]


def test_valid_tables_pass(valid_report):
    assert valid_report.success, valid_report.to_markdown()
    assert valid_report.failures == []
    assert valid_report.n_expectations >= 50
    raise_for_report(valid_report)  # does not raise
    markdown = valid_report.to_markdown()
    assert "PASS" in markdown and "FAIL" not in markdown
    assert set(valid_report.statistics["tables"]) == {"cases", "lesions", "patch_index", "patches", "patch_stats"}


def test_report_is_json_safe(valid_report):
    as_dict = json.loads(json.dumps(valid_report.to_dict()))
    assert as_dict["success"] is True
    assert as_dict["n_expectations"] == valid_report.n_expectations


@pytest.mark.parametrize(("breaker", "table", "column", "expectation"), BREAKS, ids=[b[0].__name__ for b in BREAKS])
def test_each_break_is_named(tables, breaker, table, column, expectation):
    *broken, rules = breaker(*copies(tables), RULES)
    report = validate_tables(*broken, rules=rules, patch_shape=PATCH_SHAPE)

    assert not report.success
    named = [f for f in report.failures if f.table == table and f.column == column]
    assert named, f"no failure on {table}.{column}:\n{report.to_markdown()}"
    assert expectation in {f.expectation for f in named}
    assert all(f.details for f in report.failures)

    with pytest.raises(DataValidationError) as caught:
        raise_for_report(report)
    message = str(caught.value)
    assert "FAIL" in message
    assert (f"{table}.{column}" if column else f"{table}:") in message
    assert expectation in message
    assert caught.value.report is report


def test_offending_values_and_rows_are_quoted(tables):
    c, l, i, p = copies(tables)
    l.loc[3, "volume_ml"] = 9999.0
    report = validate_tables(c, l, i, p, rules=RULES, patch_shape=PATCH_SHAPE)
    (failure,) = report.failures
    assert (failure.table, failure.column) == ("lesions", "volume_ml")
    assert "9999" in failure.details and l.loc[3, "lesion_id"] in failure.details and "1 of 6" in failure.details
    assert f"lesions.volume_ml: `{failure.expectation}` — " in report.to_markdown()


def test_several_problems_are_all_reported(tables):
    c, l, i, p, _ = nan_volume(*copies(tables), RULES)
    c, l, i, p, _ = zero_spacing(c, l, i, p, RULES)
    c, l, i, p, _ = unknown_case_id(c, l, i, p, RULES)
    c, l, i, p, _ = wrong_patch_shape(c, l, i, p, RULES)
    c, l, i, p, _ = nan_in_patch(c, l, i, p, RULES)
    report = validate_tables(c, l, i, p, rules=RULES, patch_shape=PATCH_SHAPE)

    where = {(f.table, f.column) for f in report.failures}
    expected = {
        ("lesions", "volume_ml"),
        ("cases", "spacing_2"),
        ("lesions", "case_id"),
        ("patch_stats", "width"),
        ("patch_stats", "n_nonfinite"),
    }
    assert expected <= where, report.to_markdown()
    assert report.statistics["tables"]["cases"]["failed"] == 1
    message = str(pytest.raises(DataValidationError, raise_for_report, report).value)
    for table, column in expected:
        assert f"{table}.{column}" in message
    assert message.count("\n- ") >= len(expected)


def test_rules_thresholds_are_applied(tables):
    strict = with_changes(QUICK.validation, max_lesion_volume_ml=0.185, min_lesions=7)
    report = validate_tables(*copies(tables), rules=strict, patch_shape=PATCH_SHAPE)
    where = {(f.table, f.column, f.expectation) for f in report.failures}
    assert ("lesions", "volume_ml", "expect_column_values_to_be_between") in where
    assert ("lesions", None, "expect_table_row_count_to_be_between") in where


def test_patch_statistics():
    patches = make_patches(3)
    patches[1, 0, 0, 2] = np.inf
    index = pd.DataFrame({"lesion_id": ["a", "b"], "row": [0, 1]})  # row 2 is not indexed
    stats = patch_statistics(patches, index)

    assert list(stats.columns) == [
        "lesion_id",
        "row",
        "channel",
        "mean",
        "std",
        "min",
        "max",
        "n_nonfinite",
        "height",
        "width",
    ]
    assert len(stats) == 9 and list(stats["channel"]) == [0, 1, 2] * 3
    assert (stats["height"] == PATCH_SHAPE[0]).all() and (stats["width"] == PATCH_SHAPE[1]).all()
    assert stats["n_nonfinite"].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0]
    np.testing.assert_allclose(stats["mean"].drop(index=5), 0.0, atol=1e-6)
    np.testing.assert_allclose(stats["std"].drop(index=5), 1.0, atol=1e-5)
    assert np.isfinite(stats.loc[5, ["mean", "std", "min", "max"]].astype(float)).all()  # over finite values only
    assert stats.loc[stats["row"] == 2, "lesion_id"].isna().all()
    assert stats.loc[stats["row"] == 1, "lesion_id"].eq("b").all()
    np.testing.assert_allclose(stats.loc[0, "min"], patches[0, :, :, 0].min())


def test_patch_statistics_rejects_a_3d_tensor():
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        patch_statistics(np.zeros((2, 4, 4), np.float32), pd.DataFrame({"lesion_id": [], "row": []}))


def test_rules_reject_typos_and_inconsistent_thresholds():
    with pytest.raises(ValueError, match="extra"):
        with_changes(QUICK.validation, min_metastasis_fractoin=0.2)
    with pytest.raises(ValueError, match="min_metastasis_fraction"):
        with_changes(QUICK.validation, min_metastasis_fraction=0.8, max_metastasis_fraction=0.7)
    with pytest.raises(ValueError, match="spacing_range_mm"):
        with_changes(QUICK.validation, spacing_range_mm=(5.0, 1.0))
    with pytest.raises(ValueError):
        RULES.min_lesions = 3  # frozen


def test_failure_line_format():
    report = ValidationReport(
        success=False,
        failures=[Failure("lesions", "expect_column_values_to_be_in_set", "label", "values [2]")],
        n_expectations=1,
    )
    assert "- lesions.label: `expect_column_values_to_be_in_set` — values [2]" in report.to_markdown()
    assert "FAIL" in report.to_markdown()


def test_import_is_lazy_and_gx_is_quiet():
    """Importing the module does not import GX; validating under a DEBUG root logger prints no GX chatter."""
    script = textwrap.dedent(
        f"""
        import logging, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import liverlesion_ops.validation as v
        assert "great_expectations" not in sys.modules
        logging.basicConfig(level=logging.DEBUG, format="LOG %(name)s %(message)s")
        from test_validation import PATCH_SHAPE, QUICK, make_tables
        assert v.validate_tables(*make_tables(), rules=QUICK.validation, patch_shape=PATCH_SHAPE).success
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "Skipping registering" not in output
    assert "Calculating Metrics" not in output
    assert "LOG great_expectations" not in output
