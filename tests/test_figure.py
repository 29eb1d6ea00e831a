"""The colour-coded lesion map (``liverlesion.figure``): colours follow the prediction, radiological
orientation, the panel cap, determinism and the error cases. Renders small PNGs; a few seconds."""

import matplotlib.colors as mcolors
import matplotlib.image as mimage
import numpy as np
import pandas as pd
import pytest

from liverlesion.figure import (
    _DPI,
    _HEADER_IN,
    CYST_COLOUR,
    DISCLAIMER,
    MAX_LESION_PANELS,
    METASTASIS_COLOUR,
    _display,
    lesion_map_figure,
)

SHAPE = (120, 110, 20)
SPACING = (0.8, 0.8, 2.5)
LIVER_HU, METASTASIS_HU, CYST_HU = 100.0, 50.0, 10.0
# Both lesions on axial slice 10. RAS+: the metastasis at high x (patient's right) and high y
# (anterior), the cyst at low x (patient's left) and low y (posterior).
MET_CENTRE, MET_RADIUS = (80, 70, 10), 9
CYST_CENTRE, CYST_RADIUS = (40, 40, 10), 7


def _ball(centre, radius_mm):
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    d2 = sum(((c - c0) * s) ** 2 for c, c0, s in zip((x, y, z), centre, SPACING))
    return d2 <= radius_mm**2


def synthetic_case():
    """A synthetic CT: air, a 100 HU liver ellipse, a 50 HU metastasis and a 10 HU cyst."""
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    liver = ((x - 60) / 52) ** 2 + ((y - 55) / 48) ** 2 <= 1
    image = np.where(liver[..., None], LIVER_HU, -1000.0) + rng.normal(0, 8, SHAPE)
    met, cyst = _ball(MET_CENTRE, MET_RADIUS * SPACING[0]), _ball(CYST_CENTRE, CYST_RADIUS * SPACING[0])
    image[met], image[cyst] = METASTASIS_HU, CYST_HU
    instances = np.zeros(SHAPE, dtype=np.int32)
    instances[met], instances[cyst] = 1, 2
    voxel_ml = float(np.prod(SPACING)) / 1000
    rows = []
    for instance, lesion_id, p in ((1, "case_001-L01", 0.87), (2, "case_001-L02", 0.12)):
        coords = np.argwhere(instances == instance)
        rows.append(
            {
                "instance": instance,
                "lesion_id": lesion_id,
                "p_metastasis": p,
                "predicted": int(p >= 0.5),
                "volume_ml": len(coords) * voxel_ml,
                **{f"centroid_{a}": float(coords[:, a].mean()) for a in range(3)},
            }
        )
    return image.astype(np.int16), instances, pd.DataFrame(rows)


@pytest.fixture(scope="module")
def case():
    return synthetic_case()


def _colour_mask(rgb: np.ndarray, colour: str, tolerance: float = 0.1) -> np.ndarray:
    """Pixels within ``tolerance`` (per channel, 0-1 scale) of ``colour``."""
    return np.all(np.abs(rgb - np.asarray(mcolors.to_rgb(colour))) <= tolerance, axis=-1)


def _read(path):
    rgb = mimage.imread(path)[..., :3]
    return rgb, _colour_mask(rgb, METASTASIS_COLOUR), _colour_mask(rgb, CYST_COLOUR)


def test_figure_is_a_png_with_both_class_colours(case, tmp_path):
    image, instances, results = case
    out = lesion_map_figure(
        image, SPACING, instances, results, tmp_path / "sub" / "map.png", title="case_001", threshold=0.5
    )
    assert out == tmp_path / "sub" / "map.png" and out.is_file()
    rgb, met, cyst = _read(out)
    height, width = rgb.shape[:2]
    assert 800 <= width <= 3000 and 600 <= height <= 3000  # overview + 2 panels in one row
    assert met.sum() > 200 and cyst.sum() > 200
    # and not only in the legend: each colour spans more than one legend-sized strip
    for mask in (met, cyst):
        rows = np.nonzero(mask.any(axis=1))[0]
        assert rows.max() - rows.min() > 0.3 * height


def test_colours_follow_the_prediction(case, tmp_path):
    """All called cyst: no metastasis colour outside the legend's one swatch, more cyst colour."""
    image, instances, results = case
    _, met_mixed, cyst_mixed = _read(
        lesion_map_figure(image, SPACING, instances, results, tmp_path / "mixed.png", threshold=0.5)
    )
    all_cyst = results.assign(p_metastasis=[0.3, 0.12], predicted=0)
    _, met, cyst = _read(lesion_map_figure(image, SPACING, instances, all_cyst, tmp_path / "cyst.png", threshold=0.5))
    rows, cols = np.nonzero(met)
    assert len(rows) < 0.25 * met_mixed.sum()  # what is left is the legend swatch...
    assert rows.max() - rows.min() < 15 and cols.max() - cols.min() < 120  # ...one short line
    assert rows.max() < _HEADER_IN * _DPI  # ...in the header
    assert cyst.sum() > cyst_mixed.sum() + 200  # the metastasis's outlines turned cyst-coloured
    all_met = results.assign(p_metastasis=[0.87, 0.6], predicted=1)
    _, met, cyst = _read(lesion_map_figure(image, SPACING, instances, all_met, tmp_path / "met.png", threshold=0.5))
    rows = np.nonzero(cyst)[0]
    assert rows.max() - rows.min() < 15 and rows.max() < _HEADER_IN * _DPI
    assert met.sum() > met_mixed.sum() + 200


def test_overview_is_in_radiological_orientation(case, tmp_path):
    """Metastasis at the patient's right-anterior, cyst left-posterior: in the overview (first
    panel, left column, below the header) the metastasis is up and left of the cyst."""
    image, instances, results = case
    rgb, met, cyst = _read(lesion_map_figure(image, SPACING, instances, results, tmp_path / "map.png", threshold=0.5))
    overview = np.zeros(met.shape, dtype=bool)
    overview[int(_HEADER_IN * _DPI) :, : rgb.shape[1] // 3] = True  # 3 panels in one row
    (met_r, met_c), (cyst_r, cyst_c) = (np.argwhere(m & overview).mean(axis=0) for m in (met, cyst))
    assert met_c < cyst_c  # patient's right on the viewer's left
    assert met_r < cyst_r  # anterior up


def test_display_puts_right_anterior_top_left():
    plane = np.zeros((5, 4))  # (x, y) of a RAS+ volume
    plane[4, 3] = 1  # most right, most anterior
    plane[0, 0] = 2  # most left, most posterior
    shown = _display(plane)
    assert shown.shape == (4, 5)  # rows: y (A -> P), columns: x (R -> L)
    assert shown[0, 0] == 1 and shown[-1, -1] == 2


def test_same_inputs_give_the_same_bytes(case, tmp_path):
    image, instances, results = case
    a = lesion_map_figure(image, SPACING, instances, results, tmp_path / "a.png", title="t", threshold=0.5)
    b = lesion_map_figure(image, SPACING, instances, results, tmp_path / "b.png", title="t", threshold=0.5)
    assert a.read_bytes() == b.read_bytes()


def test_many_lesions_are_capped(tmp_path):
    """More lesions than panels: the page does not grow past the cap (left-out count is printed)."""
    shape, spacing = (60, 60, 3), (1.0, 1.0, 3.0)
    image = np.full(shape, 100.0)

    def case_of(n):
        instances, rows = np.zeros(shape, dtype=np.int32), []
        for k in range(1, n + 1):
            x, y = 4 + 7 * ((k - 1) % 8), 4 + 7 * ((k - 1) // 8)
            instances[x : x + 3, y : y + 3, 1] = k
            rows.append(
                {
                    "instance": k,
                    "lesion_id": f"L{k:02d}",
                    "p_metastasis": 0.9 if k % 2 else 0.1,
                    "predicted": k % 2,
                    "volume_ml": 0.027,
                    "centroid_0": x + 1.0,
                    "centroid_1": y + 1.0,
                    "centroid_2": 1.0,
                }
            )
        return instances, pd.DataFrame(rows)

    capped = mimage.imread(
        lesion_map_figure(image, spacing, *case_of(MAX_LESION_PANELS + 6), tmp_path / "a.png", threshold=0.5)
    )
    full = mimage.imread(
        lesion_map_figure(image, spacing, *case_of(MAX_LESION_PANELS), tmp_path / "b.png", threshold=0.5)
    )
    assert capped.shape == full.shape


def test_disclaimer_text_is_the_agreed_line():
    assert DISCLAIMER == "Research use only \u2014 not for diagnostic use"


def test_errors_name_the_problem(case, tmp_path):
    image, instances, results = case
    with pytest.raises(ValueError, match=r"shape \(120, 110, 19\)"):
        lesion_map_figure(image, SPACING, instances[:, :, :-1], results, tmp_path / "x.png", threshold=0.5)
    ghost = pd.concat([results, results.iloc[[0]].assign(instance=7, lesion_id="case_001-L07")], ignore_index=True)
    with pytest.raises(ValueError, match="case_001-L07.*instance 7"):
        lesion_map_figure(image, SPACING, instances, ghost, tmp_path / "x.png", threshold=0.5)
    with pytest.raises(ValueError, match="case_001-L02.*contradicts"):
        lesion_map_figure(image, SPACING, instances, results.assign(predicted=1), tmp_path / "x.png", threshold=0.5)
    with pytest.raises(ValueError, match="spacing"):
        lesion_map_figure(image, (0.8, 0.0, 2.5), instances, results, tmp_path / "x.png", threshold=0.5)
    with pytest.raises(ValueError, match="volume_ml"):
        lesion_map_figure(
            image, SPACING, instances, results.drop(columns="volume_ml"), tmp_path / "x.png", threshold=0.5
        )
    assert not (tmp_path / "x.png").exists()


def test_module_leaves_pyplot_alone():
    """Figure + FigureCanvasAgg only: no global backend switch or figure registry for other code."""
    import inspect

    import liverlesion.figure as figure

    source = inspect.getsource(figure)
    assert "pyplot" not in source.replace("never ``pyplot``", "") and "matplotlib.use(" not in source
