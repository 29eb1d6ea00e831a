"""The data contract of the case, lesion and patch tables, checked with Great Expectations 1.x.

The pipeline's ``validate`` step runs :func:`validate_tables` on the tables that ``ingest``,
``segment`` and ``extract_patches`` produced, then :func:`raise_for_report`: a violation stops the
run before training, with a markdown report naming the table, the column, the expectation and the
offending values (and the ids of the rows that hold them).

Every rule is one Great Expectations expectation, written one per line in the four suites below
(``cases``, ``lesions``, ``patch_index``, ``patch_stats``). GX has no cross-table expectation, so
the references between tables are expressed with the other table's ids as a value set. The patch
tensor itself is summarised per patch channel (:func:`patch_statistics`) and that table is
validated; the few things a table cannot say (the tensor's rank, dtype and length) are checked in
plain Python and reported in the same report. Every failure is collected before anything is
raised.

Great Expectations is imported lazily (importing it takes ~5 s and pulls in scipy), and with its
import-time chatter silenced: see :func:`_import_gx`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from liverlesion.config import ValidationRules
from liverlesion.contract import (
    AXES,
    CASE_COLUMNS,
    LABEL_CYST,
    LABEL_METASTASIS,
    LABEL_NAMES,
    LESION_COLUMNS,
    PATCH_CHANNELS,
    PATCH_INDEX_COLUMNS,
    PATCH_STATS_COLUMNS,
)

if TYPE_CHECKING:
    from types import ModuleType

#: Three on-disk axis codes, one from each of the pairs R/L, A/P, S/I, in any order ("RAS", "LPS", "PLS").
ORIENTATION_REGEX = r"^(?=.*[RL])(?=.*[AP])(?=.*[SI])[RLAPSI]{3}$"

#: The tables of the report, in report order; "patches" holds the plain-Python tensor checks.
TABLES = ("cases", "lesions", "patch_index", "patches", "patch_stats")
#: Which columns identify an offending row in each table's report lines.
_ID_COLUMNS = {
    "cases": ("case_id",),
    "lesions": ("lesion_id",),
    "patch_index": ("lesion_id",),
    "patch_stats": ("lesion_id", "row", "channel"),
}
_NOT_EVALUATED = "not evaluated: "  # the details of an expectation GX could not compute
_N_EXAMPLES = 5  # unexpected values (and row ids) quoted per failure
_STATS_CHUNK = 32  # patches summarised at once (bounds the temporary copies)
_GX_QUIETENED = False  # whether this module set the level of the "great_expectations" logger


@dataclass
class Failure:
    """One violated expectation."""

    table: str
    expectation: str  # GX's expectation type, e.g. "expect_column_values_to_be_between"
    column: str | None  # None for a table-level expectation; "a,b" for a column pair
    details: str  # what was expected, what was found, a few offending values and row ids

    @property
    def where(self) -> str:
        return f"{self.table}.{self.column}" if self.column else self.table

    def to_line(self) -> str:
        return f"{self.where}: `{self.expectation}` — {self.details}"


@dataclass
class ValidationReport:
    """Every expectation's outcome over the four tables and the patch tensor."""

    success: bool
    failures: list[Failure]
    n_expectations: int
    statistics: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self) -> str:
        n_failed = self.statistics.get("failed", len(self.failures))  # may exceed the lines below
        lines = [
            "# Data validation report",
            "",
            f"**{'PASS' if self.success else 'FAIL'}**: {self.n_expectations} expectations evaluated, "
            f"{self.n_expectations - n_failed} passed, {n_failed} failed.",
            "",
        ]
        tables = self.statistics.get("tables", {})
        for table in TABLES:
            info = tables.get(table)
            if info is not None:
                shape = info.get("shape", f"{info.get('rows', '?')} rows")
                lines.append(
                    f"- {table}: {shape}, {info.get('expectations', 0)} expectations, "
                    f"{info.get('failed', 0)} failed" + (f" ({info['note']})" if info.get("note") else "")
                )
        lines += ["", "## Failures", ""]
        if n_failed > len(self.failures):
            lines += ["Expectations on a missing column are counted as failed and folded into its table's line.", ""]
        lines += [f"- {failure.to_line()}" for failure in self.failures] or ["None."]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": bool(self.success),
            "n_expectations": int(self.n_expectations),
            "n_failures": len(self.failures),
            "failures": [asdict(failure) for failure in self.failures],
            "statistics": _json_safe(self.statistics),
        }


class DataValidationError(ValueError):
    """The data broke the contract; the message is the markdown report."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.to_markdown())
        self.report = report


def raise_for_report(report: ValidationReport) -> None:
    """Raise :class:`DataValidationError` (listing every failure) unless the report passed."""
    if not report.success:
        raise DataValidationError(report)


def patch_statistics(patches: np.ndarray, patch_index: pd.DataFrame) -> pd.DataFrame:
    """Summarise every channel of every patch in the tensor, one row per (patch, channel).

    Rows follow the tensor, not the index, so a patch that no index row points at shows up with a
    null ``lesion_id``. ``mean``, ``std`` (population), ``min`` and ``max`` are over the finite
    values only (NaN where there are none); ``n_nonfinite`` counts NaN and infinities.

    Args:
        patches: (N, H, W, C) array.
        patch_index: its index table; ``lesion_id`` and ``row`` are used, rows that are missing,
            not integers or out of range are ignored here (the ``patch_index`` suite reports them).

    Raises:
        ValueError: the tensor is not 4-D or not numeric.
    """
    patches = np.asarray(patches)
    if patches.ndim != 4 or not np.issubdtype(patches.dtype, np.number):
        raise ValueError(f"patches must be a numeric (N, H, W, C) array, got shape {patches.shape} {patches.dtype}")
    n, height, width, n_channels = patches.shape
    lesion_of_row = _lesion_of_row(patch_index, n)

    parts = [
        # (patches x channels, pixels), one contiguous row per patch channel
        _channel_stats(np.moveaxis(patches[start : start + _STATS_CHUNK], 3, 1).reshape(-1, height * width))
        for start in range(0, n, _STATS_CHUNK)
    ]
    columns = {
        name: np.concatenate([part[name] for part in parts]) if parts else np.empty(0)
        for name in ("mean", "std", "min", "max", "n_nonfinite")
    }
    rows = np.repeat(np.arange(n), n_channels)
    stats = pd.DataFrame(
        {
            "lesion_id": [lesion_of_row.get(int(r)) for r in rows],
            "row": rows,
            "channel": np.tile(np.arange(n_channels), n),
            **columns,
            "height": height,
            "width": width,
        },
        columns=list(PATCH_STATS_COLUMNS),
    )
    return stats.astype({"n_nonfinite": np.int64, "row": np.int64, "channel": np.int64})


def _channel_stats(block: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, population std, min, max over the finite values of each row, and the non-finite count."""
    finite = np.isfinite(block)
    n_nonfinite = block.shape[1] - finite.sum(axis=1)
    clean = n_nonfinite == 0
    stats = {name: np.full(len(block), np.nan) for name in ("mean", "std", "min", "max")}
    stats["n_nonfinite"] = n_nonfinite
    if block.shape[1] == 0:  # an empty (0-pixel) patch: nothing to summarise
        return stats
    if clean.any():  # the usual case: plain reductions, accumulated in float64
        good = block if clean.all() else block[clean]
        stats["mean"][clean] = good.mean(axis=1, dtype=np.float64)
        stats["std"][clean] = good.std(axis=1, dtype=np.float64)
        stats["min"][clean] = good.min(axis=1)
        stats["max"][clean] = good.max(axis=1)
    if not clean.all():
        bad = np.where(finite[~clean], block[~clean], np.nan).astype(np.float64)
        with warnings.catch_warnings():  # a row with no finite value at all: NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            stats["mean"][~clean] = np.nanmean(bad, axis=1)
            stats["std"][~clean] = np.nanstd(bad, axis=1)
            stats["min"][~clean] = np.nanmin(bad, axis=1)
            stats["max"][~clean] = np.nanmax(bad, axis=1)
    return stats


def validate_tables(
    cases: pd.DataFrame,
    lesions: pd.DataFrame,
    patch_index: pd.DataFrame,
    patches: np.ndarray,
    rules: ValidationRules,
    patch_shape: tuple[int, int] | None,
) -> ValidationReport:
    """Check the case, lesion and patch tables and the patch tensor against the data contract.

    ``patch_shape`` is the (rows, cols) every patch must have (the profile's patch size; None: not checked).

    Runs every expectation (one ephemeral GX context per call) and returns the report; nothing is
    raised for bad data: pass the report to :func:`raise_for_report` to stop a run.
    """
    start = time.perf_counter()
    gx = _import_gx()
    patches = np.asarray(patches)
    failures: list[Failure] = []
    tables: dict[str, dict[str, Any]] = {}

    # The tensor: what no table can say. Checked first, so patch_stats can be skipped when it cannot be built.
    tensor_failures = _tensor_failures(patches, patch_index)
    tables["patches"] = {
        "shape": f"shape {tuple(int(s) for s in patches.shape)} {patches.dtype}",
        "expectations": 3,
        "failed": len(tensor_failures),
    }

    frames: dict[str, pd.DataFrame] = {"cases": cases, "lesions": lesions, "patch_index": patch_index}
    suites = {
        "cases": _case_expectations(gx.expectations, rules),
        "lesions": _lesion_expectations(gx.expectations, rules, cases),
        "patch_index": _patch_index_expectations(gx.expectations, lesions, n_patches=_n_patches(patches)),
    }
    if patches.ndim == 4 and np.issubdtype(patches.dtype, np.number):
        frames["patch_stats"] = patch_statistics(patches, patch_index)
        suites["patch_stats"] = _patch_stats_expectations(gx.expectations, rules, patch_shape)
    else:
        tables["patch_stats"] = {
            "rows": 0,
            "expectations": 0,
            "failed": 0,
            "note": "not evaluated: no (N, H, W, C) tensor",
        }

    context = _ephemeral_context(gx)
    source = context.data_sources.add_pandas(name="liverlesion")
    for table in TABLES:
        if table == "patches":
            failures += tensor_failures
        if table not in suites:
            continue
        table_failures, n_run, n_failed = _run_suite(gx, context, source, table, frames[table], suites[table])
        failures += table_failures
        tables[table] = {"rows": len(frames[table]), "expectations": n_run, "failed": n_failed}

    n_expectations = sum(info["expectations"] for info in tables.values())
    statistics = {
        "failed": sum(info["failed"] for info in tables.values()),
        "tables": tables,
        "seconds": round(time.perf_counter() - start, 3),
        "great_expectations_version": gx.__version__,
        "rules": rules.model_dump(mode="json"),
    }
    return ValidationReport(
        success=not failures, failures=failures, n_expectations=n_expectations, statistics=statistics
    )


# --- the suites: one expectation per line -------------------------------------------------------


def _case_expectations(E: ModuleType, rules: ValidationRules) -> list:
    spacing_lo, spacing_hi = rules.spacing_range_mm
    return [
        E.ExpectTableColumnsToMatchSet(column_set=list(CASE_COLUMNS), exact_match=False),  # every contract column is there (extra ones are fine)
        E.ExpectTableRowCountToBeBetween(min_value=1),  # at least one CT
        E.ExpectColumnValuesToNotBeNull(column="case_id"),  # the key of the table
        E.ExpectColumnValuesToBeUnique(column="case_id"),  # one row per CT
        E.ExpectColumnValuesToNotBeNull(column="patient_key"),  # splits and bootstrap group by patient
        E.ExpectColumnValuesToNotBeNull(column="image_path"),  # every CT has its image...
        E.ExpectColumnValuesToNotBeNull(column="mask_path"),  # ...and its lesion mask
        E.ExpectColumnValuesToNotBeNull(column="data_version"),  # lineage: which cohort version
        E.ExpectColumnValuesToMatchRegex(column="orientation", regex=ORIENTATION_REGEX),  # valid axis codes
        *(E.ExpectColumnValuesToNotBeNull(column=f"spacing_{a}") for a in AXES),  # a range check skips nulls
        *(E.ExpectColumnValuesToBeBetween(column=f"spacing_{a}", min_value=spacing_lo, max_value=spacing_hi) for a in AXES),  # voxel size in mm
        *(E.ExpectColumnValuesToBeBetween(column=f"shape_{a}", min_value=1) for a in AXES),  # no empty volume
    ]  # fmt: skip


def _lesion_expectations(E: ModuleType, rules: ValidationRules, cases: pd.DataFrame) -> list:
    hu_lo, hu_hi = rules.hu_range
    case_ids = _values(cases, "case_id")
    case_patients = _pairs(cases, "case_id", "patient_key")
    return [
        E.ExpectTableColumnsToMatchSet(column_set=list(LESION_COLUMNS), exact_match=False),  # every contract column is there
        E.ExpectTableRowCountToBeBetween(min_value=rules.min_lesions),  # enough lesions to split and train
        E.ExpectColumnValuesToNotBeNull(column="lesion_id"),  # the key of the table
        E.ExpectColumnValuesToBeUnique(column="lesion_id"),  # one row per lesion
        E.ExpectColumnValuesToNotBeNull(column="case_id"),  # every lesion belongs to a CT...
        E.ExpectColumnValuesToBeInSet(column="case_id", value_set=case_ids),  # ...that is in the case table
        E.ExpectColumnPairValuesToBeInSet(column_A="case_id", column_B="patient_key", value_pairs_set=case_patients),  # and to that CT's patient (no leak across splits)
        E.ExpectColumnValuesToNotBeNull(column="label"),  # an in-set check skips nulls
        E.ExpectColumnValuesToBeInSet(column="label", value_set=[LABEL_CYST, LABEL_METASTASIS]),  # 0 cyst, 1 metastasis
        E.ExpectColumnValuesToBeInSet(column="label_name", value_set=list(LABEL_NAMES.values())),  # "cyst", "metastasis"
        E.ExpectColumnPairValuesToBeInSet(column_A="label", column_B="label_name", value_pairs_set=list(LABEL_NAMES.items())),  # code and name agree
        E.ExpectColumnMeanToBeBetween(column="label", min_value=rules.min_metastasis_fraction, max_value=rules.max_metastasis_fraction),  # class balance: fraction of metastases
        E.ExpectColumnValuesToBeBetween(column="n_voxels", min_value=1),  # no empty lesion
        E.ExpectColumnValuesToNotBeNull(column="volume_ml"),  # a range check skips nulls
        E.ExpectColumnValuesToBeBetween(column="volume_ml", min_value=0, strict_min=True, max_value=rules.max_lesion_volume_ml),  # 0 < volume <= max
        E.ExpectColumnValuesToNotBeNull(column="mean_hu"),  # a range check skips nulls
        E.ExpectColumnValuesToBeBetween(column="mean_hu", min_value=hu_lo, max_value=hu_hi),  # CT numbers, not raw stored values
        E.ExpectColumnValuesToBeBetween(column="std_hu", min_value=0),  # a standard deviation
        *(E.ExpectColumnValuesToBeBetween(column=f"bbox_lo_{a}", min_value=0) for a in AXES),  # a negative index would wrap around
        *(E.ExpectColumnPairValuesAToBeGreaterThanB(column_A=f"bbox_hi_{a}", column_B=f"bbox_lo_{a}") for a in AXES),  # lo < hi (hi exclusive)
    ]  # fmt: skip


def _patch_index_expectations(E: ModuleType, lesions: pd.DataFrame, n_patches: int) -> list:
    lesion_ids = _values(lesions, "lesion_id")
    return [
        E.ExpectTableColumnsToMatchSet(column_set=list(PATCH_INDEX_COLUMNS), exact_match=False),  # every contract column is there
        E.ExpectTableRowCountToEqual(value=len(lesions)),  # one row per lesion...
        E.ExpectColumnValuesToNotBeNull(column="lesion_id"),  # the key of the table
        E.ExpectColumnValuesToBeUnique(column="lesion_id"),  # ...no lesion twice...
        E.ExpectColumnDistinctValuesToEqualSet(column="lesion_id", value_set=lesion_ids),  # ...and exactly the lesion table's lesions
        E.ExpectColumnValuesToNotBeNull(column="row"),  # every lesion has a patch...
        E.ExpectColumnValuesToBeUnique(column="row"),  # ...of its own...
        E.ExpectColumnValuesToBeBetween(column="row", min_value=0, max_value=max(n_patches - 1, 0), strict_max=n_patches == 0),  # ...inside the tensor
        E.ExpectColumnValuesToBeInSet(column="main_axis", value_set=list(AXES)),  # an array axis
        E.ExpectColumnValuesToBeBetween(column="main_slice", min_value=0),  # a slice index
    ]  # fmt: skip


def _patch_stats_expectations(E: ModuleType, rules: ValidationRules, patch_shape: tuple[int, int] | None) -> list:
    tol = rules.standardisation_tolerance
    expectations = [
        E.ExpectColumnValuesToNotBeNull(column="lesion_id"),  # every patch in the tensor is some lesion's
        E.ExpectColumnDistinctValuesToEqualSet(column="channel", value_set=list(range(PATCH_CHANNELS))),  # three planes per lesion
        E.ExpectColumnValuesToBeBetween(column="n_nonfinite", min_value=0, max_value=0),  # no NaN or inf
        E.ExpectColumnValuesToNotBeNull(column="mean"),  # a channel with no finite value at all
        E.ExpectColumnValuesToBeBetween(column="mean", min_value=-tol, max_value=tol),  # standardised: mean 0...
        E.ExpectColumnValuesToNotBeNull(column="std"),  # a channel with no finite value at all
        E.ExpectColumnValuesToBeBetween(column="std", min_value=1 - tol, max_value=1 + tol),  # ...std 1 (a constant channel, std 0, fails)
    ]  # fmt: skip
    if patch_shape is not None:
        height, width = patch_shape
        expectations += [
            E.ExpectColumnValuesToBeBetween(column="height", min_value=height, max_value=height),  # the network's input rows
            E.ExpectColumnValuesToBeBetween(column="width", min_value=width, max_value=width),  # the network's input columns
        ]  # fmt: skip
    return expectations


def _tensor_failures(patches: np.ndarray, patch_index: pd.DataFrame) -> list[Failure]:
    """The three tensor checks GX cannot express: rank, dtype, one patch per index row."""
    failures = []
    if patches.ndim != 4 or (patches.ndim == 4 and patches.shape[-1] == 0):
        failures.append(Failure("patches", "expect_tensor_to_be_4d", "shape",
                                f"expected (N, H, W, {PATCH_CHANNELS}), found shape {patches.shape}"))  # fmt: skip
    if patches.dtype != np.float32:
        failures.append(Failure("patches", "expect_tensor_dtype_to_be_float32", "dtype", f"found {patches.dtype}"))
    n, n_index = _n_patches(patches), len(patch_index)
    if n != n_index:
        failures.append(Failure("patches", "expect_tensor_length_to_equal_patch_index_rows", "shape",
                                f"{n} patches in the tensor, {n_index} rows in patch_index"))  # fmt: skip
    return failures


# --- running GX and reading its results ----------------------------------------------------------


def _import_gx() -> ModuleType:
    """Import Great Expectations with its logging quietened to warnings.

    Importing GX logs ~200 INFO records ("Skipping registering function ... because it does not
    have a class", from ``great_expectations._docs_decorators``) and ~2,400 DEBUG records (the
    expectation, metric and data source registries); every ephemeral context then logs "Created
    temporary directory ... for ephemeral docs site" at INFO, from
    ``great_expectations.data_context.types.base``, a logger GX pins to INFO at import. They reach
    the terminal whenever the root logger lets INFO through, as it does once ZenML has configured
    logging (the grey lines). Unless someone has already set the ``great_expectations`` logger's
    level, it is set to WARNING before the import, and GX's own loggers that pin a lower level are
    made to inherit it. The root logger and other libraries' loggers are left alone.
    """
    global _GX_QUIETENED
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        gx_logger.setLevel(logging.WARNING)
        _GX_QUIETENED = True
    import great_expectations as gx

    if _GX_QUIETENED:
        for name, child in list(logging.root.manager.loggerDict.items()):
            if (
                name.startswith("great_expectations.")
                and isinstance(child, logging.Logger)
                and logging.NOTSET < child.level < logging.WARNING
            ):
                child.setLevel(logging.NOTSET)  # inherit WARNING from "great_expectations"
    return gx


def _ephemeral_context(gx: ModuleType):
    """An in-memory context with no progress bars (GX draws tqdm bars on stderr for each suite)."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _run_suite(
    gx: ModuleType, context, source, table: str, frame: pd.DataFrame, expectations: list
) -> tuple[list[Failure], int, int]:
    """Validate one dataframe against one suite.

    Returns:
        The failures to report, in suite order; how many expectations ran; how many failed (more
        than reported: an expectation on a missing column is folded into the missing-columns line).
    """
    batch = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe(name=table)
    suite = context.suites.add(gx.ExpectationSuite(name=table, expectations=expectations))
    if len(suite.expectations) != len(expectations):  # the constructor logs and drops an invalid one
        raise RuntimeError(
            f"suite {table!r}: {len(expectations) - len(suite.expectations)} expectation(s) were rejected"
        )
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch, suite=suite))
    # An id column missing from the frame would make every column expectation raise, so only present ones.
    id_columns = [c for c in _ID_COLUMNS.get(table, ()) if c in frame.columns]
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": _N_EXAMPLES}
    if id_columns:
        result_format["unexpected_index_column_names"] = id_columns
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)

    order = {expectation.id: i for i, expectation in enumerate(suite.expectations)}
    failed = sorted(
        (r for r in result.results if not r.success),
        key=lambda r: order.get(r.expectation_config.id, len(order)),
    )
    failures = [_failure(table, r, id_columns) for r in failed]

    # Expectations that could not run because their column is missing repeat the missing-columns
    # failure: fold them into it, so that a dropped column reads as one line, not one per rule.
    columns_failure = next((f for f in failures if f.expectation == "expect_table_columns_to_match_set"), None)
    if columns_failure is not None:
        kept = [f for f in failures if not _on_missing_column(f, frame)]
        if len(kept) < len(failures):
            columns_failure.details += f"; {len(failures) - len(kept)} expectation(s) on them not evaluated"
        failures = kept
    return failures, len(result.results), len(failed)


def _on_missing_column(failure: Failure, frame: pd.DataFrame) -> bool:
    return (
        failure.details.startswith(_NOT_EVALUATED)
        and failure.column is not None
        and any(c not in frame.columns for c in failure.column.split(","))
    )


def _failure(table: str, result, id_columns: list[str]) -> Failure:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    if "column" in kwargs:
        column = str(kwargs["column"])
    elif "column_A" in kwargs:
        column = f"{kwargs['column_A']},{kwargs['column_B']}"
    else:
        column = None
    error = _exception_message(result.exception_info)
    if error is not None:
        details = f"{_NOT_EVALUATED}{error}"
    else:
        details = _describe(kwargs, result.result or {}, id_columns)
    return Failure(table=table, expectation=config.type, column=column, details=details)


def _exception_message(info: Any) -> str | None:
    """GX nests the exception per metric when a metric failed to compute; find the message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message")).removeprefix("Error: ")
    for value in info.values():
        if isinstance(value, dict) and (value.get("raised_exception") or value.get("exception_message")):
            return str(value.get("exception_message")).removeprefix("Error: ")
    return None


def _describe(kwargs: dict, result: dict, id_columns: list[str]) -> str:
    """One readable sentence: what was expected, what was found, and where."""
    parts = []
    expected = _expected(kwargs)
    mismatched = (result.get("details") or {}).get("mismatched")
    if mismatched is not None:  # ExpectTableColumnsToMatchSet
        missing = mismatched.get("missing") or []
        parts.append(f"missing columns {_fmt_list(missing, limit=len(missing))}")  # all of them: each must be fixed
    elif "partial_missing_list" in result:  # ExpectColumnDistinctValuesToEqualSet
        if result.get("missing_count"):
            parts.append(
                f"{result['missing_count']} expected value(s) absent: {_fmt_list(result['partial_missing_list'])}"
            )
        if result.get("unexpected_count"):
            parts.append(
                f"{result['unexpected_count']} unexpected value(s): {_fmt_list(result.get('partial_unexpected_list') or [])}"
            )
    elif "unexpected_count" in result and "element_count" in result:  # the column-map expectations
        n_bad, n_all = result["unexpected_count"], result["element_count"]
        parts.append(f"{n_bad} of {n_all} rows unexpected ({result.get('unexpected_percent') or 0:.3g}%)")
        # GX counts values within its truncated example list only, so quote distinct values, no counts
        counts = result.get("partial_unexpected_counts")
        examples = [c["value"] for c in counts] if counts else result.get("partial_unexpected_list") or []
        if examples:
            parts.append(f"values {_fmt_list(examples)}")
        where = _where(result.get("partial_unexpected_index_list") or [], id_columns)
        if where:
            parts.append(where)
    elif "observed_value" in result:
        parts.append(f"observed {_fmt(result['observed_value'])}")
    if expected:
        parts.append(f"expected {expected}")
    return "; ".join(parts) or "failed"


def _expected(kwargs: dict) -> str:
    if "min_value" in kwargs or "max_value" in kwargs:
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        if lo is not None and lo == hi and not kwargs.get("strict_min") and not kwargs.get("strict_max"):
            return f"== {_fmt(lo)}"
        bounds = []
        if lo is not None:
            bounds.append(f"{'>' if kwargs.get('strict_min') else '>='} {_fmt(lo)}")
        if hi is not None:
            bounds.append(f"{'<' if kwargs.get('strict_max') else '<='} {_fmt(hi)}")
        return " and ".join(bounds)
    if "value_set" in kwargs:
        return f"values in {_fmt_set(kwargs['value_set'])}"
    if "value_pairs_set" in kwargs:
        return f"pairs in {_fmt_set(kwargs['value_pairs_set'])}"
    if "value" in kwargs:
        return f"== {_fmt(kwargs['value'])}"
    if "regex" in kwargs:
        return f"matching {kwargs['regex']}"
    return ""


def _where(index_list: list, id_columns: list[str]) -> str:
    """The ids of the offending rows (or their dataframe index, when the table has no id column)."""
    if not index_list:
        return ""
    if isinstance(index_list[0], dict) and id_columns:
        ids = [tuple(item.get(c) for c in id_columns) for item in index_list]
        name = id_columns[0] if len(id_columns) == 1 else "(" + ", ".join(id_columns) + ")"
        values = [i[0] if len(i) == 1 else i for i in ids]
        return f"at {name} {_fmt_list(values)}"
    return f"at index {_fmt_list(index_list)}"


def _fmt(value: Any) -> str:
    value = _native(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _fmt_list(values: list, limit: int = _N_EXAMPLES) -> str:
    values = list(values)
    shown = ", ".join(_fmt(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def _fmt_set(values: list) -> str:
    values = list(values)
    if len(values) > 2 * _N_EXAMPLES:
        return f"a set of {len(values)} values ({', '.join(_fmt(v) for v in values[:3])}, ...)"
    return "{" + ", ".join(_fmt(v) for v in values) + "}"


def _native(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _json_safe(value: Any) -> Any:
    value = _native(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _values(frame: pd.DataFrame, column: str) -> list:
    """The distinct non-null values of a column as plain Python objects ([] when it is missing)."""
    if column not in frame.columns:
        return []
    return sorted({_native(v) for v in frame[column].dropna()}, key=str)


def _pairs(frame: pd.DataFrame, a: str, b: str) -> list[tuple]:
    if a not in frame.columns or b not in frame.columns:
        return []
    pairs = frame[[a, b]].dropna().drop_duplicates()
    return [(_native(x), _native(y)) for x, y in pairs.itertuples(index=False)]


def _n_patches(patches: np.ndarray) -> int:
    return int(patches.shape[0]) if patches.ndim >= 1 else 0


def _lesion_of_row(patch_index: pd.DataFrame, n: int) -> dict[int, Any]:
    """Tensor row -> lesion id, from the index rows whose ``row`` is a valid integer (first wins)."""
    if "row" not in patch_index.columns or "lesion_id" not in patch_index.columns:
        return {}
    mapping: dict[int, Any] = {}
    for lesion_id, row in zip(patch_index["lesion_id"], patch_index["row"]):
        try:
            r = float(row)
        except (TypeError, ValueError):
            continue
        if math.isfinite(r) and r.is_integer() and 0 <= r < n and not pd.isna(lesion_id):
            mapping.setdefault(int(r), _native(lesion_id))
    return mapping
