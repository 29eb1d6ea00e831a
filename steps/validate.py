from typing import Annotated, Any

import numpy as np
import pandas as pd
from zenml import log_metadata, step

from liverlesion.validation import ValidationRules, raise_for_report, validate_tables
from steps.tracking import run_reports_dir, zenml_run


@step
def validate(
    cases: pd.DataFrame,
    lesions: pd.DataFrame,
    patch_index: pd.DataFrame,
    patches: np.ndarray,
    rules: ValidationRules,
) -> Annotated[dict[str, Any], "validation_report"]:
    """Great Expectations on the case, lesion and patch tables; a violation stops the run here."""
    report = validate_tables(cases, lesions, patch_index, patches, rules)
    path = run_reports_dir(zenml_run().name) / "validation.md"
    path.write_text(report.to_markdown())
    print(f"[validate] {'PASS' if report.success else 'FAIL'}: report at {path}", flush=True)
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
