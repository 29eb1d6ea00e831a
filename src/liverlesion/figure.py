"""The colour-coded lesion map (the paper's Figure 5): every lesion outlined in its predicted class.

Perdigon Romero et al. colour-code the segmented lesions of a CT volume by predicted type "thus
allowing specialists to quickly validate the lesion type". ``lesion_map_figure`` draws that check as
one PNG: an overview axial slice through the largest lesion with every outline, then one cropped
axial panel per lesion (its outline thicker), each captioned with the lesion id, P(metastasis),
the called class, the volume and the slice. Outlines, not filled blobs, so the reader still sees the
lesion's own attenuation and margin, which is what the check is about.

Display conventions (what a radiologist expects, and what a wrong transpose silently breaks):

* The volume is canonical RAS+ (``liverlesion.imaging``): axis 0 runs towards the patient's right,
  axis 1 towards anterior, axis 2 towards superior.
* Axial slices are shown in radiological convention, patient's right on the viewer's left and
  anterior up, i.e. ``image[:, :, z].T[::-1, ::-1]``; the panels carry R/L (and A/P) markers.
* Pixels keep their physical aspect (``spacing``), and every panel has a scale bar.

Matplotlib is used through ``Figure`` and ``FigureCanvasAgg`` directly, never ``pyplot``: no global
backend switch or figure registry, so calling this from a pipeline step or a test changes nothing
for other code.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage
from skimage.measure import find_contours

from liverlesion.contract import LABEL_CYST, LABEL_METASTASIS, LABEL_NAMES
from liverlesion.lesions import labels_present

# ---------------------------------------------------------------------------------------------
# Colours. Okabe-Ito vermillion and sky blue: a pair that stays distinct under the common colour
# vision deficiencies (deutan, protan and tritan), unlike pure red vs green, and both stand out
# against a grey-scale CT, vermillion on bright parenchyma and sky blue inside dark lesions.
# Vermillion keeps the "red = malignant" reading; the legend says which is which regardless.
# ---------------------------------------------------------------------------------------------
METASTASIS_COLOUR = "#D55E00"
CYST_COLOUR = "#56B4E9"
CLASS_COLOURS = {LABEL_METASTASIS: METASTASIS_COLOUR, LABEL_CYST: CYST_COLOUR}
#: Lesions present in ``instances`` but absent from ``results`` (not classified): neutral, dotted.
UNCLASSIFIED_COLOUR = "white"

# ---------------------------------------------------------------------------------------------
# Grey-scale window: a portal-venous liver window, W 200 / L 80 HU (-20..180 HU), rather than the
# wider W 400 / L 40 soft-tissue window. Enhanced parenchyma (100-120 HU) sits at mid-to-light
# grey, cysts (0-20 HU) near black and hypodense metastases (typically 20-70 HU below the liver) in
# between, so what separates the two classes - attenuation, homogeneity, margin, an enhancing rim -
# is visible; contrast-filled vessels (150-190 HU) stay just distinguishable from parenchyma. The
# narrower W 150 / L 60 puts such a liver near white and exaggerates 10-20 HU image noise. Fat and
# air clip to black, which costs nothing here: the question is the lesion, not the abdominal wall.
# ---------------------------------------------------------------------------------------------
WINDOW_WIDTH_HU = 200.0
WINDOW_LEVEL_HU = 80.0

#: Tissue shown around each lesion in its panel (mm beyond the lesion's in-plane bounding box on
#: every side): enough liver to judge the margin and the neighbourhood, small enough that a 1 cm
#: lesion still fills a good part of the panel.
CROP_MARGIN_MM = 30.0
#: Lesion panels at most (plus the overview): beyond ~6 rows the panels get too small to read;
#: the figure says how many lesions were left out.
MAX_LESION_PANELS = 24
#: Panels per row: four keeps each panel large enough to judge a lesion margin on a page or screen.
PANELS_PER_ROW = 4

# Geometry of the page (inches) and resolution: a 4-column page is 13 in x 150 dpi ~ 2000 px wide.
_PANEL_WIDTH_IN = 3.25
_PANEL_HEIGHT_IN = 3.9  # image plus three caption lines
_HEADER_IN = 1.05
_FOOTER_LINE_IN = 0.17  # one line of the 8 pt notes
_FOOTER_DISCLAIMER_IN = 0.35
_NOTE_CHAR_IN = 0.068  # mean width of an 8 pt DejaVu Sans character, to wrap the notes
_DPI = 150
_OWN_LINE_WIDTH = 2.2  # points: the panel's own lesion
_OTHER_LINE_WIDTH = 1.1  # points: other lesions in the same field of view
_LABEL_STROKE = [patheffects.withStroke(linewidth=2.5, foreground="black")]

DISCLAIMER = "Research use only \u2014 not for diagnostic use"
REQUIRED_COLUMNS = (
    "instance",
    "lesion_id",
    "p_metastasis",
    "predicted",
    "volume_ml",
    "centroid_0",
    "centroid_1",
    "centroid_2",
)


@dataclass(frozen=True)
class _Lesion:
    """One row of ``results``, checked, with where it lies in ``instances``."""

    number: int  # 1-based position in the figure (panel badge)
    instance: int
    lesion_id: str
    p_metastasis: float
    predicted: int
    volume_ml: float
    box: tuple[slice, slice, slice]  # bounding box in ``instances``
    z: int  # the axial slice shown


def _validate(image: np.ndarray, spacing, instances: np.ndarray, results: pd.DataFrame, threshold: float) -> None:
    """Raise ``ValueError`` on inputs the figure would misdraw silently."""
    if image.ndim != 3:
        raise ValueError(f"image must be a 3D volume (x, y, z); got shape {image.shape}")
    if instances.shape != image.shape:
        raise ValueError(f"instances shape {instances.shape} differs from image shape {image.shape}")
    if not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(f"instances must hold integer lesion numbers; got dtype {instances.dtype}")
    if len(spacing) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive voxel sizes in mm; got {tuple(spacing)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1; got {threshold}")
    missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        raise ValueError(f"results lacks columns {missing}; needs {list(REQUIRED_COLUMNS)}")
    if results["instance"].duplicated().any():
        dup = results.loc[results["instance"].duplicated(keep=False), "lesion_id"].tolist()
        raise ValueError(f"results has several rows for one instance: lesions {dup}")


def _lesions(results: pd.DataFrame, instances: np.ndarray, threshold: float) -> list[_Lesion]:
    """Check every row of ``results`` against ``instances`` and pick each lesion's axial slice."""
    boxes = ndimage.find_objects(instances if instances.min(initial=0) >= 0 else np.clip(instances, 0, None))
    lesions = []
    for number, row in enumerate(results.itertuples(index=False), start=1):
        lesion_id, instance = str(row.lesion_id), int(row.instance)
        box = boxes[instance - 1] if 1 <= instance <= len(boxes) else None
        if box is None:
            raise ValueError(f"lesion {lesion_id}: instance {instance} does not occur in the instance map")
        p = float(row.p_metastasis)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"lesion {lesion_id}: p_metastasis {p} is not a probability")
        if pd.isna(row.predicted) or row.predicted not in CLASS_COLOURS:
            raise ValueError(f"lesion {lesion_id}: predicted {row.predicted} is neither 0 (cyst) nor 1 (metastasis)")
        predicted = int(row.predicted)
        if predicted != int(p >= threshold):
            raise ValueError(
                f"lesion {lesion_id}: predicted {LABEL_NAMES[predicted]} contradicts P(metastasis) = {p:.3f} at "
                f"threshold {threshold} (a lesion is called metastasis at P >= threshold); pass the threshold "
                "the predictions were made with"
            )
        lesions.append(
            _Lesion(
                number,
                instance,
                lesion_id,
                p,
                predicted,
                float(row.volume_ml),
                box,
                _axial_slice(instances, instance, box, float(row.centroid_2)),
            )
        )
    return lesions


def _axial_slice(instances: np.ndarray, instance: int, box: tuple[slice, slice, slice], centroid_z: float) -> int:
    """The centroid's axial slice, or the lesion's largest cross-section if the centroid misses it.

    A curved or horseshoe lesion's centroid can fall on a slice where the lesion itself is absent;
    a panel without its own outline would be useless, so such a lesion is shown where it is widest.
    """
    z = int(np.clip(round(centroid_z), 0, instances.shape[2] - 1))
    if box[2].start <= z < box[2].stop and np.any(instances[box[0], box[1], z] == instance):
        return z
    areas = (instances[box] == instance).sum(axis=(0, 1))
    return int(box[2].start + np.argmax(areas))


def _display(plane: np.ndarray) -> np.ndarray:
    """An axial plane (x, y) of a RAS+ volume in radiological convention: rows anterior->posterior,
    columns patient's right->left."""
    return plane.T[::-1, ::-1]


def _crop(lesion: _Lesion, shape: tuple[int, ...], spacing: tuple[float, float, float]) -> tuple[slice, slice]:
    """In-plane field of view of a lesion panel: square in mm, centred on the lesion, clipped to the image."""
    half_mm = max((lesion.box[a].stop - lesion.box[a].start) * spacing[a] for a in (0, 1)) / 2 + CROP_MARGIN_MM
    crop = []
    for a in (0, 1):
        centre = (lesion.box[a].start + lesion.box[a].stop - 1) / 2
        half = half_mm / spacing[a]
        crop.append(slice(max(int(math.floor(centre - half)), 0), min(int(math.ceil(centre + half)) + 1, shape[a])))
    return crop[0], crop[1]


def _outline(ax: Axes, labels: np.ndarray, instance: int, colour: str, width: float, style: str = "-") -> None:
    """Draw the boundary of ``labels == instance`` (a displayed 2D plane) as closed lines.

    The mask is padded with background so that a lesion cut by the field of view still gets a
    closed outline; the 0.5 iso-line of a binary mask runs half-way between voxel centres, on the
    lesion's voxel edges.
    """
    mask = np.pad(labels == instance, 1).astype(np.float32)
    for contour in find_contours(mask, 0.5):
        ax.plot(
            contour[:, 1] - 1,
            contour[:, 0] - 1,
            color=colour,
            linewidth=width,
            linestyle=style,
            solid_joinstyle="round",
            solid_capstyle="round",
        )


def _show_plane(ax: Axes, plane: np.ndarray, spacing: tuple[float, float, float], interpolation: str) -> None:
    """Grey-scale CT in the liver window with its physical aspect; ticks off, frame kept."""
    low, high = WINDOW_LEVEL_HU - WINDOW_WIDTH_HU / 2, WINDOW_LEVEL_HU + WINDOW_WIDTH_HU / 2
    # one displayed row spans spacing[1] mm (axis 1), one column spacing[0] mm (axis 0)
    ax.imshow(plane, cmap="gray", vmin=low, vmax=high, aspect=spacing[1] / spacing[0], interpolation=interpolation)
    ax.set_xticks([])
    ax.set_yticks([])


def _decorate(ax: Axes, n_rows: int, n_cols: int, spacing: tuple[float, float, float], full: bool) -> None:
    """Orientation markers (R/L, and A/P on the overview) and a scale bar."""
    style = dict(color="white", fontweight="bold", path_effects=_LABEL_STROKE, transform=ax.transAxes)
    ax.text(0.015, 0.5, "R", ha="left", va="center", fontsize=10, **style)
    ax.text(0.985, 0.5, "L", ha="right", va="center", fontsize=10, **style)
    if full:
        ax.text(0.5, 0.985, "A", ha="center", va="top", fontsize=10, **style)
        ax.text(0.5, 0.015, "P", ha="center", va="bottom", fontsize=10, **style)
    width_mm = n_cols * spacing[0]
    bar_mm = next((b for b in (100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0) if b <= width_mm / 4), None)
    if bar_mm is None:  # a field of view under 4 mm: no bar would fit
        return
    bar = bar_mm / spacing[0]
    x1 = n_cols - 0.5 - 0.04 * n_cols
    y = n_rows - 0.5 - 0.06 * n_rows
    ax.plot([x1 - bar, x1], [y, y], color="white", linewidth=3, solid_capstyle="butt", path_effects=_LABEL_STROKE)
    ax.text(
        x1 - bar / 2,
        y - 0.035 * n_rows,
        f"{bar_mm:g} mm",
        color="white",
        fontsize=7,
        ha="center",
        va="bottom",
        path_effects=_LABEL_STROKE,
    )


def _draw_outlines(ax: Axes, labels: np.ndarray, by_instance: dict[int, _Lesion], own: int | None) -> None:
    """Every lesion in a displayed plane, in the colour of its predicted class; ``own`` thicker."""
    for instance in np.unique(labels):
        instance = int(instance)
        if instance <= 0:
            continue
        lesion = by_instance.get(instance)
        if lesion is None:
            _outline(ax, labels, instance, UNCLASSIFIED_COLOUR, _OTHER_LINE_WIDTH, ":")
        else:
            width = _OWN_LINE_WIDTH if instance == own else _OTHER_LINE_WIDTH
            _outline(ax, labels, instance, CLASS_COLOURS[lesion.predicted], width)


def _volume_text(volume_ml: float) -> str:
    return f"{volume_ml:.2f} mL" if volume_ml < 1 else f"{volume_ml:.1f} mL"


def _overview(
    ax: Axes,
    image: np.ndarray,
    instances: np.ndarray,
    spacing,
    lesions: list[_Lesion],
    by_instance: dict[int, _Lesion],
    shown: set[int],
) -> None:
    """The whole axial slice through the largest lesion, all outlines, panel numbers beside lesions."""
    largest = max(lesions, key=lambda lesion: lesion.volume_ml)
    z = largest.z
    plane, labels = _display(image[:, :, z]), _display(instances[:, :, z])
    _show_plane(ax, plane, spacing, "antialiased")
    _draw_outlines(ax, labels, by_instance, own=None)
    for instance, rows_cols in zip(*_positions(labels)):
        lesion = by_instance.get(instance)
        if lesion is None or lesion.number not in shown:
            continue
        row, col = rows_cols
        ax.text(
            col,
            row,
            f"#{lesion.number}",
            color="white",
            fontsize=8,
            fontweight="bold",
            ha="left",
            va="bottom",
            path_effects=_LABEL_STROKE,
        )
    _decorate(ax, *plane.shape, spacing, full=True)
    ax.set_title("Overview", fontsize=10, fontweight="bold", loc="left")
    ax.set_xlabel(f"axial slice {z} (largest lesion, #{largest.number})\nall lesions in this slice", fontsize=8.5)


def _positions(labels: np.ndarray) -> tuple[list[int], list[tuple[float, float]]]:
    """Where to put each lesion's badge in a displayed plane: just above-right of its outline."""
    instances, where = [], []
    for index, box in enumerate(ndimage.find_objects(np.clip(labels, 0, None)), start=1):
        if box is not None:
            instances.append(index)
            where.append((box[0].start - 0.5, box[1].stop - 0.5))
    return instances, where


def _lesion_panel(
    ax: Axes, image: np.ndarray, instances: np.ndarray, spacing, lesion: _Lesion, by_instance: dict[int, _Lesion]
) -> None:
    """One lesion: cropped axial slice through it, all outlines there, caption with the call."""
    crop_x, crop_y = _crop(lesion, image.shape, spacing)
    plane = _display(image[crop_x, crop_y, lesion.z])
    labels = _display(instances[crop_x, crop_y, lesion.z])
    _show_plane(ax, plane, spacing, "nearest")
    _draw_outlines(ax, labels, by_instance, own=lesion.instance)
    _decorate(ax, *plane.shape, spacing, full=False)
    colour = CLASS_COLOURS[lesion.predicted]
    for spine in ax.spines.values():  # frame in the class colour: the call is visible at a glance
        spine.set_edgecolor(colour)
        spine.set_linewidth(2.5)
    ax.set_title(f"#{lesion.number}  {lesion.lesion_id}", fontsize=9.5, fontweight="bold", loc="left")
    ax.set_xlabel(
        f"predicted {LABEL_NAMES[lesion.predicted]}   P(metastasis) = {lesion.p_metastasis:.2f}\n"
        f"volume {_volume_text(lesion.volume_ml)}   axial slice {lesion.z}",
        fontsize=9,
    )


def _notes(left_out: int, width_in: float) -> str:
    """The footer: display conventions, and how many lesions got no panel, wrapped to the page."""
    notes = (
        f"Axial slices in radiological convention (patient's right on the viewer's left, anterior up); "
        f"window W {WINDOW_WIDTH_HU:g} / L {WINDOW_LEVEL_HU:g} HU; lesion panels show "
        f"{CROP_MARGIN_MM:g} mm around the lesion; thick outline = the panel's lesion."
    )
    if left_out:
        notes += (
            f" {left_out} further lesion{'s' if left_out != 1 else ''} not shown as panels "
            "(outlined in the overview if in its slice; see the results table)."
        )
    return textwrap.fill(notes, width=int(width_in / _NOTE_CHAR_IN))


def lesion_map_figure(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    instances: np.ndarray,
    results: pd.DataFrame,
    out: Path,
    threshold: float,
    title: str = "",
) -> Path:
    """Draw the colour-coded lesion map of one CT volume as a PNG (the paper's Figure 5).

    Panels: first an overview (the whole axial slice through the largest lesion, every outline,
    each lesion tagged with its panel number), then one panel per lesion in ``results`` order,
    at most ``MAX_LESION_PANELS`` of them (the figure says how many were left out; the overview
    still outlines them). A lesion panel is the axial slice through the lesion's centroid, cropped
    to the lesion's in-plane box plus ``CROP_MARGIN_MM``, with every lesion of that slice outlined
    in the colour of its predicted class and the panel's own lesion thicker, captioned with lesion
    id, predicted class, P(metastasis), volume and slice index. Lesions of ``instances`` that are
    not in ``results`` are outlined white and dotted. The page carries the title, a colour legend,
    the display conventions and a research-use-only line.

    Args:
        image: the CT in HU, axes canonical RAS+ (x towards the patient's right, y anterior,
            z superior), as ``liverlesion.imaging`` loads it.
        spacing: voxel size in mm along the three axes.
        instances: integer volume, same shape as ``image``: 0 background, ``k`` lesion ``k``.
        results: one row per lesion with ``instance``, ``lesion_id``, ``p_metastasis``,
            ``predicted`` (0 cyst, 1 metastasis), ``volume_ml`` and ``centroid_0..2`` (voxels).
        out: PNG file to write; its parent folders are created.
        title: heading of the figure, e.g. the case id and model; a generic one if empty.
        threshold: the P(metastasis) at or above which a lesion was called metastasis; stated on
            the figure and checked against ``predicted``.

    Returns:
        ``out`` as a ``Path``.

    Raises:
        ValueError: ``instances`` and ``image`` differ in shape, ``spacing`` is not three positive
            sizes, ``results`` lacks a column, or a lesion's instance is absent from ``instances``,
            its probability is not in [0, 1] or its ``predicted`` contradicts ``threshold``
            (naming the lesion).
    """
    image, instances = np.asarray(image), np.asarray(instances)
    spacing = tuple(float(s) for s in spacing)
    _validate(image, spacing, instances, results, threshold)
    lesions = _lesions(results, instances, threshold)
    by_instance = {lesion.instance: lesion for lesion in lesions}
    shown = lesions[:MAX_LESION_PANELS]
    left_out = len(lesions) - len(shown)

    n_panels = len(shown) + (1 if lesions else 0)
    n_cols = max(1, min(PANELS_PER_ROW, n_panels))
    n_rows = max(1, math.ceil(n_panels / n_cols))
    width = max(n_cols, 2) * _PANEL_WIDTH_IN
    notes = _notes(left_out, width)
    footer_in = _FOOTER_DISCLAIMER_IN + _FOOTER_LINE_IN * (notes.count("\n") + 1)
    fig = Figure(figsize=(width, _HEADER_IN + n_rows * _PANEL_HEIGHT_IN + footer_in), dpi=_DPI)
    FigureCanvasAgg(fig)
    header, body, footer = fig.subfigures(3, 1, height_ratios=[_HEADER_IN, n_rows * _PANEL_HEIGHT_IN, footer_in])
    header.text(0.5, 0.93, title or "Colour-coded lesion map", ha="center", va="top", fontsize=14, fontweight="bold")
    header.text(
        0.5,
        0.56,
        f"Predicted class per lesion (metastasis if P(metastasis) \u2265 {threshold:.2f}); "
        f"{len(lesions)} lesion{'s' if len(lesions) != 1 else ''} classified",
        ha="center",
        va="center",
        fontsize=9.5,
    )
    handles = [
        Line2D([], [], color=METASTASIS_COLOUR, linewidth=_OWN_LINE_WIDTH, label="metastasis (predicted)"),
        Line2D([], [], color=CYST_COLOUR, linewidth=_OWN_LINE_WIDTH, label="cyst (predicted)"),
    ]
    if any(int(i) not in by_instance for i in labels_present(instances) if i > 0):
        handles.append(
            Line2D(
                [], [], color="0.4", linewidth=_OTHER_LINE_WIDTH, linestyle=":", label="not classified (white, dotted)"
            )
        )
    header.legend(
        handles=handles,
        loc="lower center",
        ncols=len(handles),
        frameon=False,
        fontsize=9.5,
        bbox_to_anchor=(0.5, 0.0),
        handlelength=2.5,
    )

    axes = body.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    if lesions:
        _overview(axes[0], image, instances, spacing, lesions, by_instance, {lesion.number for lesion in shown})
        for ax, lesion in zip(axes[1:], shown):
            _lesion_panel(ax, image, instances, spacing, lesion, by_instance)
    else:
        z = image.shape[2] // 2
        _show_plane(axes[0], _display(image[:, :, z]), spacing, "antialiased")
        _decorate(axes[0], image.shape[1], image.shape[0], spacing, full=True)
        axes[0].set_xlabel(f"axial slice {z}: no lesions in results", fontsize=9)
    body_in = n_rows * _PANEL_HEIGHT_IN  # margins in inches: room for the first title and last caption
    body.subplots_adjust(left=0.02, right=0.98, bottom=0.5 / body_in, top=1 - 0.3 / body_in, wspace=0.06, hspace=0.28)

    footer.text(0.5, 1.0, notes, ha="center", va="top", fontsize=8, color="0.25", linespacing=1.3)
    footer.text(
        0.5,
        0.2 * _FOOTER_DISCLAIMER_IN / footer_in,
        DISCLAIMER,
        ha="center",
        va="bottom",
        fontsize=10.5,
        fontweight="bold",
        color="black",
    )

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # no "Software" entry: two renderings of the same inputs give the same bytes
    fig.savefig(out, format="png", dpi=_DPI, metadata={"Software": None}, facecolor="white")
    return out
