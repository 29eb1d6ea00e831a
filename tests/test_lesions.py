import numpy as np
import pytest

from liverlesion.lesions import instance_map, labels_present, lesion_instances


def sphere(shape, center, radius_vox):
    grid = np.indices(shape).astype(float)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return dist2 <= radius_vox**2


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5)])
def test_sphere_volume_in_ml(spacing):
    # a sphere of radius 10 mm, sampled on an anisotropic grid
    radius_mm = 10.0
    shape = (60, 60, 30)
    grid = np.indices(shape).astype(float)
    center = np.array(shape) / 2
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing))
    mask = (dist2 <= radius_mm**2).astype(np.uint8) * 2
    table = lesion_instances(mask, np.full(shape, 50.0), spacing, "c1", "p1")
    expected_ml = 4 / 3 * np.pi * radius_mm**3 / 1000  # 4.19 mL
    assert len(table) == 1
    assert table.loc[0, "volume_ml"] == pytest.approx(expected_ml, rel=0.03)
    assert table.loc[0, "label_name"] == "metastasis"
    assert table.loc[0, "mean_hu"] == pytest.approx(50.0)


def test_components_per_class_and_stable_ids():
    shape = (40, 40, 20)
    mask = np.zeros(shape, np.uint8)
    mask[sphere(shape, (10, 10, 10), 4)] = 1
    mask[sphere(shape, (30, 30, 10), 5)] = 2
    mask[sphere(shape, (10, 30, 10), 3)] = 1
    # two diagonal-touching voxels are one lesion with 26-connectivity
    mask[20, 20, 2] = 2
    mask[21, 21, 3] = 2
    image = np.zeros(shape, np.float32)
    table = lesion_instances(mask, image, (1, 1, 1), "case", "pat")
    assert table["label"].tolist() == [0, 0, 1, 1]
    assert table["lesion_id"].tolist() == ["case-L01", "case-L02", "case-L03", "case-L04"]
    assert (table["n_voxels"] > 0).all()
    assert table.loc[table["n_voxels"] == 2, "label_name"].tolist() == ["metastasis"]
    instances, described = instance_map(mask)
    assert [d["instance"] for d in described] == [1, 2, 3, 4]
    for row in table.itertuples():
        assert (instances == row.instance).sum() == row.n_voxels
    # bounding boxes hold their lesion; centroids lie inside the boxes
    for axis in range(3):
        assert (table[f"bbox_lo_{axis}"] <= table[f"centroid_{axis}"]).all()
        assert (table[f"centroid_{axis}"] < table[f"bbox_hi_{axis}"]).all()


def test_unknown_mask_code_names_the_case():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[2, 2, 2] = 7
    with pytest.raises(ValueError, match="case c9.*unknown class codes \\[7\\]"):
        lesion_instances(mask, np.zeros(mask.shape), (1, 1, 1), "c9", "p")


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="case c1: mask shape"):
        lesion_instances(np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3, 4)), (1, 1, 1), "c1", "p")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, bool, np.float32])
def test_labels_present_is_np_unique(dtype):
    """The counting pass answers exactly as sorting does, for every label type; negative, large and fractional
    values fall back to sorting."""
    rng = np.random.default_rng(4)
    volume = rng.integers(0, 7, size=(5, 64, 17_000)).astype(dtype)  # more voxels than one counting chunk
    for array in (
        volume,
        volume[:, ::3],
        volume.transpose(2, 0, 1)[::-1],
        np.zeros((0,), dtype=dtype),
        volume.ravel()[:1],
    ):
        found = labels_present(array)
        np.testing.assert_array_equal(found, np.unique(array))
        assert found.dtype == np.unique(array).dtype
    for odd in (np.array([-3, 0, 5], np.int16), np.array([0, 70_000, 2], np.int32), np.array([0.5, 0.5, 2.0])):
        np.testing.assert_array_equal(labels_present(odd), np.unique(odd))


def test_labels_present_counts_in_bounded_chunks(monkeypatch):
    from liverlesion import lesions

    monkeypatch.setattr(lesions, "_COUNT_CHUNK", 1000)  # many chunks, the last one short
    volume = np.random.default_rng(5).integers(0, 300, size=12_345).astype(np.int16)
    volume[volume == 17] = 0
    np.testing.assert_array_equal(labels_present(volume), np.unique(volume))


def _numbered_over_the_whole_volume(mask, encoding):
    """The numbering as defined: connected components of the whole volume (per class for a class-coded mask),
    numbered by class, then by position (first voxel along the last axis, then the middle, then the first)."""
    from scipy import ndimage

    codes = [None] if encoding == "binary" else sorted(set(np.unique(mask).tolist()) - {0})
    found = []
    for code in codes:
        components, _ = ndimage.label(mask != 0 if code is None else mask == code, structure=np.ones((3, 3, 3)))
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            found.append((-1 if code is None else code, tuple(b.start for b in box[::-1]), components == index, box))
    found.sort(key=lambda f: f[:2])
    expected = np.zeros(mask.shape, np.int32)
    for number, (_, _, voxels, _) in enumerate(found, start=1):
        expected[voxels] = number
    return expected, [box for *_, box in found]


@pytest.mark.parametrize("encoding", ["class", "binary"])
@pytest.mark.parametrize("seed", range(6))
def test_numbering_inside_the_lesions_box_equals_numbering_the_whole_volume(encoding, seed):
    """Lesions are numbered inside the box around all of them; the numbers, voxels and boxes are those of the
    whole volume, lesions on the volume's faces and a single corner voxel included."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(8, 40, size=3))
    mask = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(1, 7))):
        center = [int(rng.integers(0, n)) for n in shape]
        mask[sphere(shape, center, float(rng.uniform(0.5, 5)))] = rng.integers(1, 3)
    if seed % 2:
        mask[(0,) * 3] = 2  # a voxel in a corner: the box reaches the volume's faces
    instances, described = instance_map(mask, "c", encoding)
    expected, boxes = _numbered_over_the_whole_volume(mask, encoding)
    np.testing.assert_array_equal(instances, expected)
    assert [d["box"] for d in described] == boxes
    assert [d["instance"] for d in described] == list(range(1, len(boxes) + 1))


def test_a_mask_without_lesions_numbers_none():
    instances, described = instance_map(np.zeros((5, 6, 7), np.uint8), "c", "class")
    assert described == [] and instances.shape == (5, 6, 7) and not instances.any()


@pytest.mark.parametrize("seed", range(4))
def test_an_instance_mask_keeps_its_numbers_and_boxes_when_read_inside_its_box(seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(10, 30, size=3))
    mask = np.zeros(shape, np.uint16)
    for number in rng.choice(np.arange(1, 40), size=int(rng.integers(1, 6)), replace=False):
        center = [int(rng.integers(0, n)) for n in shape]
        mask[sphere(shape, center, float(rng.uniform(0.5, 4)))] = number
    instances, described = instance_map(mask, "c", "instance")
    np.testing.assert_array_equal(instances, mask.astype(np.int32))
    whole = ndimage.find_objects(mask.astype(np.int32))
    expected = [(k, box) for k, box in enumerate(whole, start=1) if box is not None]
    assert [(d["instance"], d["box"]) for d in described] == expected
