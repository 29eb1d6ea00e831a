import logging
from typing import Annotated, Any

import numpy as np
import pandas as pd
from zenml import log_metadata, step

from liverlesion.config import ValidationRules
from liverlesion_ops.project import run_reports_dir
from liverlesion_ops.tracking import zenml_run
from liverlesion_ops.validation import raise_for_report, validate_tables

log = logging.getLogger(__name__)


@step
def validate(
    cases: pd.DataFrame,
    lesions: pd.DataFrame,
    patch_index: pd.DataFrame,
    patches: np.ndarray,
    rules: ValidationRules,
    patch_shape: tuple[int, int],
) -> Annotated[dict[str, Any], "validation_report"]:
    """Great Expectations on the case, lesion and patch tables (patches of ``patch_shape``); a violation stops
    the run here."""
    report = validate_tables(cases, lesions, patch_index, patches, rules, patch_shape)
    path = run_reports_dir(zenml_run().name) / "validation.md"
    path.write_text(report.to_markdown())
    log.info(f"{'PASS' if report.success else 'FAIL'}: report at {path}")
    log_metadata(
        {
            "success": report.success,
            "expectations": report.n_expectations,
            "failures": len(report.failures),
            "report": str(path),
        }
    )
    raise_for_report(report)
    return {**report.to_dict(), "report_path": str(path)}
