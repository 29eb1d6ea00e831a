"""One page a person reads: an evaluation's report folder as a single self-contained HTML file.

A training run's evaluate step and ``liverlesion evaluate --model`` write the same files into a report folder
(``table2.csv``, ``roc_curve.png``, ``confusion_matrix.png``, ``calibration.csv``, ``reliability.png``,
``breakdown.csv``, ``failures.png``, ``lesion_map.png``); :func:`write_html_report` puts them on one page:
Table 2 with its intervals, the ROC curve, the confusion matrix, calibration, where the model fails, the worst
scored lesions and an example of the paper's Figure 5. Every image is embedded (a ``data:`` URI), the styles are
inline and the page has no script and no link out: it opens from a mail attachment, an MLflow artifact view or a
disconnected workstation alike. A file the folder lacks (a ROC curve on a cohort of one class) is named as not
drawn, with why, where it would have been.

Domain layer: pandas, Jinja2 (escaping every value) and the standard library.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from liverlesion.metrics import METRIC_NAMES
from liverlesion.report import METRIC_LABELS

REPORT_FILE = "report.html"
#: a PNG larger than this is not embedded (the page names it instead): a report stays one readable file
MAX_IMAGE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class Figure:
    """A PNG of the report folder, with what it shows."""

    file: str
    title: str
    caption: str
    missing: str = "not drawn for this evaluation"


@dataclass(frozen=True)
class Section:
    heading: str
    text: str = ""
    tables: Sequence[tuple[str, str]] = ()  # (CSV file of the folder, caption)
    figures: Sequence[Figure] = ()


#: what a report folder holds, in the order of the page
SECTIONS = (
    Section(
        "Test performance",
        "The seven metrics of the paper's Table 2, each with its patient-level bootstrap interval in brackets: "
        "patients, not lesions, were resampled.",
        figures=(
            Figure(
                "roc_curve.png",
                "ROC curve",
                "Sensitivity against 1 - specificity over every threshold.",
                "not drawn: the cohort does not hold both classes",
            ),
            Figure("confusion_matrix.png", "Confusion matrix", "Lesions by truth and answer at the threshold."),
        ),
    ),
    Section(
        "Calibration: what a probability means",
        "Brier score (0 perfect, 0.25 always saying 0.5) and expected calibration error (the mean gap, over bins "
        "of P, between the probability said and the fraction of metastases), with intervals. On the diagram a "
        "calibrated model lies on the diagonal.",
        tables=(("calibration.csv", "Brier score and expected calibration error"),),
        figures=(Figure("reliability.png", "Reliability diagram", "Fraction of metastases per bin of P(metastasis)."),),
    ),
    Section(
        "Where it fails",
        "The lesions by diameter (of the ball of the lesion's volume), by the slice spacing of their CT and by "
        "patient; n/a where a metric has no denominator (no cyst for specificity, one class for ROC AUC).",
        tables=(("breakdown.csv", "Metrics by lesion diameter, slice spacing and patient"),),
        figures=(
            Figure(
                "failures.png",
                "The worst-scored lesions",
                "Each with its three orthogonal patches (what the network saw), P(metastasis), truth, size and case.",
            ),
        ),
    ),
    Section(
        "An example answer (the paper's Figure 5)",
        "What predict gives a radiologist for one CT: every lesion outlined in the colour of its predicted class.",
        figures=(Figure("lesion_map.png", "Lesion map", "Overview slice and one panel per lesion."),),
    ),
)


@dataclass
class Page:
    """What the template fills in (built by :func:`build_page`)."""

    title: str
    facts: list[tuple[str, str]]
    notes: list[str]
    table2: dict | None
    sections: list[dict] = field(default_factory=list)


def _png_uri(path: Path) -> str | None:
    data = path.read_bytes()
    if len(data) > MAX_IMAGE_BYTES or data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _cell(value) -> str:
    if isinstance(value, float):
        return "n/a" if pd.isna(value) else f"{value:.3f}"
    return "n/a" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _table(path: Path) -> dict:
    frame = pd.read_csv(path)
    return {
        "columns": [str(c) for c in frame.columns],
        "rows": [[_cell(v) for v in row] for row in frame.itertuples(index=False)],
    }


def _interval(estimate: float, lower: float, upper: float) -> str:
    if pd.isna(estimate):
        return "n/a"
    if pd.isna(lower) or pd.isna(upper):
        return f"{estimate:.2f} [n/a]"
    return f"{estimate:.2f} [{lower:.2f}, {upper:.2f}]"


def _table2(path: Path) -> dict:
    """``report.write_report``'s ``table2.csv`` as the paper's layout: models x metrics, ``0.87 [0.78, 0.94]``."""
    frame = pd.read_csv(path)
    return {
        "columns": ["model", *(METRIC_LABELS[name] for name in METRIC_NAMES)],
        "rows": [
            [str(row["model"]), *(_interval(row[m], row[f"{m}_lower"], row[f"{m}_upper"]) for m in METRIC_NAMES)]
            for _, row in frame.iterrows()
        ],
    }


def build_page(folder: Path, title: str, facts: Sequence[tuple[str, str]], notes: Sequence[str] = ()) -> Page:
    """The page of a report folder: its tables read, its PNGs embedded, what it lacks named."""
    folder = Path(folder)
    page = Page(
        title=title,
        facts=[(str(k), str(v)) for k, v in facts],
        notes=[str(n) for n in notes],
        table2=_table2(folder / "table2.csv") if (folder / "table2.csv").exists() else None,
    )
    for section in SECTIONS:
        tables = [
            {"caption": caption, **_table(folder / name)}
            for name, caption in section.tables
            if (folder / name).exists()
        ]
        figures = []
        for figure in section.figures:
            path = folder / figure.file
            uri = _png_uri(path) if path.exists() else None
            figures.append(
                {
                    "title": figure.title,
                    "caption": figure.caption,
                    "file": figure.file,
                    "uri": uri,
                    "missing": figure.missing
                    if not path.exists()
                    else f"{figure.file} is not a PNG of at most "
                    f"{MAX_IMAGE_BYTES // 2**20} MiB: open it from the report folder",
                }
            )
        page.sections.append({"heading": section.heading, "text": section.text, "tables": tables, "figures": figures})
    return page


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ page.title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3em; }
.scroll { overflow-x: auto; } table.table2 { font-size: 0.8em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
.missing { color: #8a5a00; font-style: italic; }
footer { margin-top: 3em; font-size: 0.85em; color: #555; }
</style>
</head>
<body>
<h1>{{ page.title }}</h1>
<dl>
{% for key, value in page.facts %}<dt>{{ key }}</dt><dd>{{ value }}</dd>
{% endfor %}</dl>
{% for note in page.notes %}<p>{{ note }}</p>
{% endfor %}
{% for section in page.sections %}
<section>
<h2>{{ section.heading }}</h2>
{% if section.text %}<p>{{ section.text }}</p>{% endif %}
{% if loop.first and page.table2 %}
<div class="scroll"><table class="table2"><caption>Table 2 with 95% intervals</caption>
<tr>{% for c in page.table2.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in page.table2.rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table></div>
{% endif %}
{% for table in section.tables %}
<div class="scroll"><table><caption>{{ table.caption }}</caption>
<tr>{% for c in table.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in table.rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table></div>
{% endfor %}
{% for figure in section.figures %}
<figure>
{% if figure.uri %}<img src="{{ figure.uri }}" alt="{{ figure.title }}">
<figcaption><b>{{ figure.title }}.</b> {{ figure.caption }}</figcaption>
{% else %}<p class="missing">{{ figure.title }}: {{ figure.missing }}.</p>{% endif %}
</figure>
{% endfor %}
</section>
{% endfor %}
<footer>For research use only: not a diagnosis. Every image of this page is embedded in it; the numbers are
those of the CSV files beside it.</footer>
</body>
</html>
"""


def render_html(page: Page) -> str:
    """The page as HTML; every value escaped (case ids and titles are text, never markup)."""
    from jinja2 import Environment

    environment = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return environment.from_string(_TEMPLATE).render(page=page)


def write_html_report(folder: Path, title: str, facts: Sequence[tuple[str, str]], notes: Sequence[str] = ()) -> Path:
    """``report.html`` in ``folder``, from the files there (:data:`SECTIONS`); returns its path."""
    path = Path(folder) / REPORT_FILE
    path.write_text(render_html(build_page(folder, title, facts, notes)), encoding="utf-8")
    return path
