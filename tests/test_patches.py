import numpy as np
import pytest

from liverlesion.patches import largest_cross_section, lesion_patches, pad_to_canvas, standardise, to_square_pixels


def box_lesion(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return mask


def test_largest_cross_section_picks_the_flat_plane():
    # a slab 20 x 16 voxels across axes 0/1 but 3 thick along axis 0... (here: thin along axis 0)
    lesion = box_lesion((30, 30, 30), (10, 5, 5), (13, 25, 21))  # 3 x 20 x 16
    axis, index, area = largest_cross_section(lesion, (1.0, 1.0, 1.0))
    assert axis == 0  # the plane normal to axis 0 holds the 20 x 16 face
    assert area == pytest.approx(19 * 15)  # measured between voxel centres
    assert 10 <= index < 13


def test_largest_cross_section_uses_millimetres_between_voxel_centres():
    # a 10 x 8 x 6 voxel box; areas are measured between voxel centres: (n-1)/n of each extent
    lesion = box_lesion((30, 30, 30), (5, 5, 5), (15, 13, 11))
    axis, _, area = largest_cross_section(lesion, (1.0, 1.0, 1.0))
    assert axis == 2 and area == pytest.approx(9 * 7)
    # with 5 mm along axis 2 the (0, 2)-plane is the largest: 9 mm x 25 mm
    axis, _, area = largest_cross_section(lesion, (1.0, 1.0, 5.0))
    assert axis == 1 and area == pytest.approx(9 * 5 * 5.0)


def test_small_lesion_on_thick_slices_is_seen_axially():
    # 8 x 8 voxels in-plane at 0.8 mm on two 5 mm slices: counting whole voxels would make the
    # coronal plane (6.4 x 10 mm) "larger" than the axial one (6.4 x 6.4 mm); between voxel
    # centres it is not (5.6 x 5 mm against 5.6 x 5.6 mm)
    lesion = box_lesion((20, 20, 10), (6, 6, 4), (14, 14, 6))
    axis, _, _ = largest_cross_section(lesion, (0.8, 0.8, 5.0))
    assert axis == 2
    single = box_lesion((5, 5, 5), (2, 2, 2), (3, 3, 3))
    assert largest_cross_section(single, (1.0, 1.0, 1.0)) == (2, 2, 0.0)


def _largest_cross_section_slice_by_slice(lesion, spacing):
    """The definition, one slice at a time: each slice's voxel count x pixel area x (n-1)/n along each in-plane
    axis it spans n voxels; the first strictly largest, axial first; a section-less lesion: its fullest axial slice."""
    best = None
    for axis in (2, 1, 0):
        others = [a for a in range(3) if a != axis]
        for index in range(lesion.shape[axis]):
            section = np.take(lesion, index, axis=axis)
            if not section.any():
                continue
            spans = [int(section.any(axis=1).sum()), int(section.any(axis=0).sum())]
            factors = [(n - 1) / n if n > 1 else 0.0 for n in spans]
            area = section.sum() * (spacing[others[0]] * spacing[others[1]]) * factors[0] * factors[1]
            if best is None or area > best[2] + 1e-9:
                best = (axis, index, float(area))
    if best[2] == 0.0:
        return 2, int(np.argmax(lesion.sum(axis=(0, 1)))), 0.0
    return best


@pytest.mark.parametrize("seed", range(12))
def test_largest_cross_section_of_all_slices_at_once_is_the_slice_by_slice_one(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 14, size=3))
    lesion = rng.random(shape) < rng.uniform(0.05, 0.9)
    lesion.flat[int(rng.integers(lesion.size))] = True
    spacing = tuple(float(v) for v in rng.choice([0.7, 0.8, 1.0, 2.5, 5.0], size=3))
    assert largest_cross_section(lesion, spacing) == _largest_cross_section_slice_by_slice(lesion, spacing)


def test_pad_value_is_the_crop_mean_and_crop_is_centred():
    crop = np.arange(12, dtype=np.float32).reshape(3, 4)
    out, scale = pad_to_canvas(crop, (7, 8), float(crop.mean()))
    assert scale == 1.0
    assert out.shape == (7, 8)
    assert out[0, 0] == pytest.approx(crop.mean())
    np.testing.assert_array_equal(out[2:5, 2:6], crop)


def test_oversized_crop_is_shrunk_to_fit():
    out, scale = pad_to_canvas(np.ones((40, 10), np.float32), (20, 20), 0.0)
    assert scale == pytest.approx(0.5)
    assert out.shape == (20, 20)


def test_standardise():
    patch = np.random.default_rng(0).normal(40, 12, (20, 30))
    z = standardise(patch)
    assert z.mean() == pytest.approx(0, abs=1e-5)
    assert z.std() == pytest.approx(1, abs=1e-4)
    assert np.all(standardise(np.full((4, 4), 3.0)) == 0)


def test_three_orthogonal_patches_geometry():
    shape = (40, 50, 30)
    rng = np.random.default_rng(1)
    image = rng.normal(100, 10, shape).astype(np.float32)
    lesion = box_lesion(shape, (10, 20, 12), (23, 27, 15))  # 13 x 7 x 3: largest face normal to axis 2
    image[lesion] = 20.0
    stack, info = lesion_patches(
        image, lesion, (1.0, 1.0, 1.0), margin_mm=2, canvas=(32, 24), output_size=None, square_pixels=True
    )
    assert stack.shape == (32, 24, 3)
    assert info.main_axis == 2 and 12 <= info.main_slice < 15
    # the other two planes pass through the centre of the largest cross-section
    assert info.center_0 == 16 and info.center_1 == 23
    for c in range(3):
        assert stack[..., c].mean() == pytest.approx(0, abs=1e-4)
        assert stack[..., c].std() == pytest.approx(1, abs=1e-3)
    # channel 0 is the axial (axis 2) plane: the crop is the bbox + margin in axes (0, 1) = 17 x 11,
    # centred on the canvas; the lesion (dark) sits in its middle
    main = stack[..., 0]
    assert main[16, 12] < main[16, 1]  # the lesion is darker than the padding around it
    # padding value equals the crop mean, so after standardising the border is constant
    assert np.allclose(main[0, :], main[0, 0])


def test_output_size_resizes_the_canvas():
    shape = (30, 30, 30)
    lesion = box_lesion(shape, (10, 10, 10), (16, 18, 14))
    image = np.random.default_rng(2).normal(0, 1, shape)
    stack, _ = lesion_patches(
        image, lesion, (1, 1, 1), margin_mm=4, canvas=(252, 210), output_size=(96, 80), square_pixels=True
    )
    assert stack.shape == (96, 80, 3)


def test_empty_lesion_is_an_error():
    with pytest.raises(ValueError, match="empty lesion"):
        lesion_patches(np.zeros((5, 5, 5)), np.zeros((5, 5, 5), bool), (1, 1, 1), 4, (32, 24), None, True)


def test_square_pixels_restore_true_proportions():
    assert to_square_pixels(np.zeros((10, 2)), (1.0, 5.0), 1.0).shape == (10, 10)
    # a 10 x 10 x 2 voxel lesion on 5 mm slices (10 mm tall): its coronal plane (rows: axis 0,
    # columns: axis 2) shows it 2 pixels wide on the voxel grid, 10 pixels wide reformatted
    shape = (40, 40, 12)
    lesion = box_lesion(shape, (15, 15, 5), (25, 25, 7))
    image = np.full(shape, 100.0)
    image[lesion] = 0.0
    grid = {}
    for square in (False, True):
        stack, _ = lesion_patches(
            image, lesion, (1.0, 1.0, 5.0), margin_mm=2, canvas=(40, 40), output_size=None, square_pixels=square
        )
        coronal = stack[..., 1]
        dark = coronal < (coronal.min() + coronal.max()) / 2
        grid[square] = (int(dark.any(axis=1).sum()), int(dark.any(axis=0).sum()))
    assert grid[False] == (10, 2)
    assert grid[True] == (10, 10)
