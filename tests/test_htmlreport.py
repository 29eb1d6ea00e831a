import re

import numpy as np
import pandas as pd

from liverlesion.calibration import calibration_intervals, plot_reliability
from liverlesion.evaluation import breakdown, plot_failure_gallery
from liverlesion.htmlreport import REPORT_FILE, SECTIONS, write_html_report
from liverlesion.metrics import plot_confusion_matrix
from liverlesion.report import bootstrap_metrics, plot_roc_curves, write_report
from tests.browser import images_of

FIGURES = [figure.file for section in SECTIONS for figure in section.figures]


def _report_folder(folder, with_roc=True):
    """A report folder as the evaluate step writes it (but the lesion map: any PNG stands for it)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 10)
    p = np.clip(y * 0.6 + rng.uniform(0, 0.4, 20), 0, 1)
    patients = np.repeat([f"P{k}" for k in range(5)], 4)
    write_report({"net <v1>": bootstrap_metrics(y, p, patients, 0.5, 50, 0, 0.95)}, folder, "Test", "20 lesions")
    plot_confusion_matrix(y, p, 0.5, folder / "confusion_matrix.png")
    if with_roc:
        plot_roc_curves({"net": (y, p)}, folder / "roc_curve.png")
    calibration_intervals(y, p, patients, 5, 50, 0, 0.95).to_csv(folder / "calibration.csv", index=False)
    plot_reliability({"net": (y, p)}, 5, folder / "reliability.png")
    lesions = pd.DataFrame(
        {
            "lesion_id": [f"<script>alert({k})</script>" if k == 0 else f"L{k}" for k in range(20)],
            "label": y,
            "p_metastasis": p,
            "patient_key": patients,
            "volume_ml": rng.uniform(0.1, 20, 20),
            "slice_mm": 2.0,
        }
    )
    breakdown(lesions, 0.5, (10.0, 20.0), (2.5, 5.0)).to_csv(folder / "breakdown.csv", index=False)
    plot_failure_gallery(rng.normal(size=(20, 16, 16, 3)), lesions, 0.5, 3, folder / "failures.png")
    (folder / "lesion_map.png").write_bytes((folder / "reliability.png").read_bytes())
    return folder


def test_the_report_is_one_file_with_every_figure_and_table_in_it(tmp_path):
    folder = _report_folder(tmp_path)
    path = write_html_report(folder, "net <v1> on cohort", [("model", "net <v1>")], ["a note & more"])
    page = path.read_text()
    assert path.name == REPORT_FILE
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == len(FIGURES) == 5
    assert all(src.startswith("data:image/png;base64,") for src in sources)  # embedded, nothing to fetch
    assert not re.search(r"(href|src)=\"(?!data:)", page) and "<script" not in page  # no link out, no script
    # Table 2 in the paper's layout with intervals, as table2.md shows it
    assert re.search(r"<td>\d\.\d\d \[\d\.\d\d, \d\.\d\d\]</td>", page)
    assert "<caption>Metrics by lesion diameter, slice spacing and patient</caption>" in page
    # every value escaped: a lesion id or a title is text, never markup
    assert "net &lt;v1&gt; on cohort" in page and "&lt;script&gt;" not in page.split("</style>")[0]
    assert "<script>alert" not in page and "a note &amp; more" in page


def test_a_figure_the_folder_lacks_is_named_as_not_drawn(tmp_path):
    folder = _report_folder(tmp_path, with_roc=False)
    page = write_html_report(folder, "one class", []).read_text()
    assert "ROC curve: not drawn: the cohort does not hold both classes" in page
    assert len(re.findall(r"<img ", page)) == len(FIGURES) - 1


def test_the_report_opens_in_a_real_browser_with_every_image_loaded(tmp_path):
    """Headless Chromium opens the page alone (copied away from the folder, so only embedded images can load)."""
    folder = _report_folder(tmp_path / "folder")
    alone = tmp_path / "alone" / REPORT_FILE
    alone.parent.mkdir()
    alone.write_bytes(write_html_report(folder, "net v1 on cohort", [("model", "net v1")]).read_bytes())
    images, title = images_of(alone, tmp_path)
    assert title == "net v1 on cohort"
    assert len(images) == len(FIGURES)
    broken = [image["alt"] for image in images if not (image["complete"] and image["width"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    assert all(image["src"].startswith("data:image/png") for image in images)
