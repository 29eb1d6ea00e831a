"""The learned segmentation cascade: U-Net shape, a short training on tiny phantoms, save/load, crop rules."""

import json

import numpy as np
import pytest
from scipy import ndimage

from liverlesion.phantom import generate_patient, plan_cohort
from liverlesion.segnet import Cascade, CascadeSettings, _crop_box, _with_neighbours, build_unet, train_cascade
from tests.profiles import QUICK, with_changes

# Five small phantoms, ~120 steps per net: ~25 s on 2 CPU cores. Measured on the held-out phantom
# (TensorFlow CPU, seeds 1-5): liver Dice 0.95-0.96; lesion probability, averaged over the lesions' voxels,
# 11-140 times its average over the rest of the liver (lesion Dice 0.13-0.69: too little training to
# assert). The floors leave room for other backends and machines.
LIVER_DICE_FLOOR = 0.85
LESION_CONTRAST_FLOOR = 5.0
SETTINGS = with_changes(
    QUICK.segmenter,
    liver_size=64,
    lesion_size=64,
    base_filters=8,
    depth=3,
    epochs=12,
    batch_size=16,
    learning_rate=3e-3,
    liver_slices_per_case=32,
    lesion_slices_per_case=32,
    seed=3,
    liver_context_slices=1,  # both nets 2.5D here, the liver net's path included
    lesion_context_slices=1,
)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


@pytest.fixture(scope="module")
def phantoms():
    spec = with_changes(QUICK.cohort, seed=7, n_patients=6, n_lesions=24, size_scale=0.4)
    return [generate_patient(spec, plan) for plan in plan_cohort(spec)]


@pytest.fixture(scope="module")
def trained(phantoms):
    messages: list[str] = []
    cascade, history = train_cascade(
        ((c.image, c.liver, c.mask > 0) for c in phantoms[:5]), SETTINGS, progress=messages.append
    )
    return cascade, history, messages


@pytest.fixture(scope="module")
def held_out(trained, phantoms):
    case = phantoms[5]
    return case, *trained[0].probabilities(case.image)


def test_build_unet_output_shape_and_sigmoid_range():
    net = build_unet(32, base_filters=4, depth=2, in_channels=2, name="tiny")
    out = net.predict(np.random.default_rng(0).normal(size=(3, 32, 32, 2)).astype(np.float32), verbose=0)
    assert net.name == "tiny"
    assert out.shape == (3, 32, 32, 1)
    assert out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(ValueError, match="divisible"):
        build_unet(36, base_filters=4, depth=3)


def test_settings_json_round_trip_and_validation():
    restored = CascadeSettings.from_dict(json.loads(json.dumps(SETTINGS.as_dict())))
    assert restored == SETTINGS and isinstance(restored.hu_window, tuple)
    with pytest.raises(ValueError, match="multiple of 2"):
        with_changes(QUICK.segmenter, liver_size=100, depth=3)
    with pytest.raises(ValueError, match="hu_window"):
        with_changes(QUICK.segmenter, hu_window=(200.0, -100.0))
    with pytest.raises(ValueError, match="crop_jitter"):
        with_changes(QUICK.segmenter, crop_margin=2, crop_jitter=5)
    with pytest.raises(ValueError, match="context_slices"):
        with_changes(QUICK.segmenter, lesion_context_slices=-1)
    saved_before_2_5d = {k: v for k, v in SETTINGS.as_dict().items() if "context" not in k}
    restored = CascadeSettings.from_dict(saved_before_2_5d)  # such a cascade saw one slice
    assert restored.liver_context_slices == restored.lesion_context_slices == 0


def test_each_slice_comes_with_its_neighbours_as_channels(trained):
    volume = np.broadcast_to(np.arange(5, dtype=np.float32), (2, 2, 5))
    stacked = _with_neighbours(volume, [0, 2, 4], 1)
    assert stacked.shape == (2, 2, 3, 3)
    np.testing.assert_array_equal(stacked[0, 0], [[0, 0, 1], [1, 2, 3], [3, 4, 4]])  # ends repeated
    cascade = trained[0]
    assert (SETTINGS.liver_context_slices, SETTINGS.lesion_context_slices) == (1, 1)
    assert cascade.liver_net.input_shape[-1] == 3 and cascade.lesion_net.input_shape[-1] == 4  # + the liver


def test_crop_box_adds_margin_keeps_a_minimum_side_and_stays_inside_the_slice():
    settings = with_changes(QUICK.segmenter, crop_margin=3, crop_jitter=2, min_crop=10)
    liver = np.zeros((40, 30), bool)
    liver[10:25, 5:20] = True
    assert _crop_box(liver, settings) == (7, 28, 2, 23)
    tip = np.zeros((40, 30), bool)
    tip[0, 29] = True  # one voxel in a corner: box grown to 10 a side, shifted back inside
    assert _crop_box(tip, settings) == (0, 10, 20, 30)
    assert _crop_box(np.zeros((40, 30), bool), settings) is None
    jittered = _crop_box(liver, settings, np.random.default_rng(0))
    assert jittered[0] <= 10 and jittered[1] >= 25 and jittered[2] <= 5 and jittered[3] >= 20


def test_training_reports_history_and_progress(trained):
    _, history, messages = trained
    assert set(history) == {"liver_loss", "liver_dice", "lesion_loss", "lesion_dice"}
    assert all(len(values) == SETTINGS.epochs for values in history.values())
    assert history["liver_loss"][-1] < history["liver_loss"][0]
    assert history["lesion_loss"][-1] < history["lesion_loss"][0]
    assert any(message.startswith("case 5:") for message in messages)
    assert any(message.startswith(f"lesion net epoch {SETTINGS.epochs}/") for message in messages)


def test_liver_dice_on_held_out_phantom(held_out):
    case, liver_probability, _ = held_out
    assert dice(liver_probability > 0.5, case.liver) > LIVER_DICE_FLOOR


def test_lesion_probability_higher_inside_lesions_than_in_the_rest_of_the_liver(held_out):
    case, _, lesion_probability = held_out
    lesion = case.mask > 0
    assert lesion_probability[lesion].mean() > LESION_CONTRAST_FLOOR * lesion_probability[case.liver & ~lesion].mean()


def test_probabilities_shape_range_and_lesions_only_in_the_liver_crop(trained, held_out):
    case, liver_probability, lesion_probability = held_out
    for probability in (liver_probability, lesion_probability):
        assert probability.shape == case.image.shape and probability.dtype == np.float32
        assert probability.min() >= 0.0 and probability.max() <= 1.0
    labels, _ = ndimage.label(liver_probability > 0.5)
    liver = labels == np.bincount(labels.ravel())[1:].argmax() + 1
    reach = SETTINGS.crop_margin + SETTINGS.min_crop  # a crop never reaches further from the liver
    assert (lesion_probability > 0).any()
    for k in range(case.image.shape[2]):
        found = lesion_probability[:, :, k] > 0
        if not liver[:, :, k].any():
            assert not found.any(), f"lesion probability on slice {k}, which has no liver"
            continue
        xs, ys = np.flatnonzero(liver[:, :, k].any(1)), np.flatnonzero(liver[:, :, k].any(0))
        inside = np.zeros_like(found)
        inside[max(0, xs[0] - reach) : xs[-1] + 1 + reach, max(0, ys[0] - reach) : ys[-1] + 1 + reach] = True
        assert not (found & ~inside).any(), f"lesion probability outside the liver crop on slice {k}"


def test_save_load_round_trip_gives_identical_probabilities(trained, held_out, tmp_path):
    case, liver_probability, lesion_probability = held_out
    trained[0].save(tmp_path / "cascade")
    loaded = Cascade.load(tmp_path / "cascade")
    assert loaded.settings == SETTINGS
    again_liver, again_lesion = loaded.probabilities(case.image)
    np.testing.assert_array_equal(again_liver, liver_probability)
    np.testing.assert_array_equal(again_lesion, lesion_probability)


def test_training_is_repeatable_with_the_same_seed(phantoms):
    settings = with_changes(
        QUICK.segmenter,
        liver_size=32,
        lesion_size=32,
        base_filters=4,
        depth=2,
        epochs=1,
        liver_slices_per_case=8,
        lesion_slices_per_case=8,
    )
    case = phantoms[1]
    runs = [train_cascade([(case.image, case.liver, case.mask > 0)], settings) for _ in range(2)]
    assert runs[0][1] == runs[1][1]
    for first, second in zip(runs[0][0].lesion_net.get_weights(), runs[1][0].lesion_net.get_weights()):
        np.testing.assert_array_equal(first, second)
