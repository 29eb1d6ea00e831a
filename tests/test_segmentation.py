"""Automatic segmentation and its measures: on phantoms with known masks, and on shapes with known answers."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from liverlesion.ingestion import ingest_cases, labelled_lesions, segment_cases
from liverlesion.lesions import instance_map
from liverlesion.morphology import cut_at_necks, dilate_mm, distance_mm, erode_mm, fill_holes
from liverlesion.phantom import generate_cohort, generate_patient, plan_cohort
from liverlesion.segmentation import (
    Segmentation,
    assd,
    classical_segmentation,
    compare_to_reference,
    dice,
    end_to_end,
    match_lesions,
    outside_liver,
    segment_lesions,
    segment_liver,
    segmentation_summary,
    with_bulging_tumours,
)
from liverlesion.splitting import split_lesions, split_like_reference
from tests.profiles import QUICK, with_changes

CLASSICAL = with_changes(QUICK.segment, method="classical")
# floors for the classical method on default-size phantoms with the organs around the liver (measured: liver
# Dice 0.97-0.99, lesion Dice 0.43-0.85 per case, every reference lesion of 0.1 mL and more found)
LIVER_DICE_FLOOR = 0.95
LESION_DICE_FLOOR = 0.6  # the mean over the cases below
RECALL_FLOOR = 0.8  # lesions of at least 0.1 mL


def ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_dice_and_surface_distance_on_known_shapes():
    a = np.zeros((20, 20, 20), bool)
    a[5:10, 5:10, 5:10] = True
    b = np.roll(a, 2, axis=0)  # the same cube two voxels on
    assert dice(a, a) == 1.0 and dice(a, b) == pytest.approx(2 * 75 / 250)
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # nothing to find, nothing found
    assert assd(a, a, (1.0, 1.0, 1.0)) == 0.0
    assert np.isnan(assd(a, np.zeros_like(a), (1.0, 1.0, 1.0)))  # no surface to measure to
    shifted = assd(a, b, (1.0, 1.0, 1.0))
    assert 0.5 < shifted <= 2.0
    assert assd(a, b, (2.0, 2.0, 2.0)) == pytest.approx(2 * shifted)  # millimetres, not voxels


def test_lesions_are_matched_found_missed_and_invented():
    shape = (40, 40, 40)
    reference = np.zeros(shape, np.int32)
    reference[ball(shape, (10, 10, 10), 4)] = 1
    reference[ball(shape, (30, 30, 30), 3)] = 2
    automatic = np.zeros(shape, np.int32)
    automatic[ball(shape, (11, 10, 10), 4)] = 1  # lesion 1, a voxel off
    automatic[ball(shape, (10, 30, 10), 2)] = 2  # nothing there
    by_reference, by_automatic = match_lesions(reference, automatic, detection_dice=0.2)
    assert by_reference[1][1:] == (1, True) and by_reference[1][0] > 0.8
    assert by_reference[2] == (0.0, 0, False)
    assert by_automatic[1][0] == 1 and by_automatic[1][2] and by_automatic[2] == (0, 0.0, False)

    seg = Segmentation(liver=np.ones(shape, bool), lesions=automatic > 0)
    case, rows, labels = compare_to_reference(
        "c1",
        "P1",
        "classical",
        (1.0, 1.0, 1.0),
        seg,
        automatic,
        reference,
        {1: 1, 2: 0},
        None,
        0.2,
        0.5,
        outside_liver_mm=10.0,
    )
    assert labels == {1: 1, 2: None}  # the found lesion takes its reference's class; the invented one none
    assert (case["reference_lesions"], case["found_lesions"], case["automatic_lesions"], case["invented_lesions"]) == (
        2,
        1,
        2,
        1,
    )
    assert np.isnan(case["liver_dice"])  # no reference liver: not measured, not made up
    outcomes = {(r["kind"], r["instance"]): r["outcome"] for r in rows}
    assert outcomes == {
        ("reference", 1): "found",
        ("reference", 2): "missed",
        ("automatic", 1): "matched",
        ("automatic", 2): "invented",
    }
    lesions = pd.DataFrame(rows)
    counts = end_to_end(lesions, pd.DataFrame({"lesion_id": ["c1-L01"], "p_metastasis": [0.9]}), threshold=0.5)
    assert counts["found_called_right_metastasis"] == 1 and counts["missed_cyst"] == 1 and counts["invented"] == 1
    assert counts["recall"] == 1.0 and counts["specificity"] == 0.0  # the cyst was missed
    summary = segmentation_summary(pd.DataFrame([case]), lesions)
    assert summary["detection_recall"] == 0.5 and summary["false_positives_per_patient"] == 1.0


def test_millimetre_distances_match_scipy_s_on_an_anisotropic_grid_with_the_edge_in_or_out():
    rng = np.random.default_rng(3)
    mask = ndimage.gaussian_filter(rng.random((40, 36, 12)), 2) > 0.5
    mask[:, :, 0] = True  # touches the volume's edge: there the two edge modes differ
    spacing = (0.7, 0.8, 2.5)
    inside = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    assert np.allclose(distance_mm(mask, spacing, edge_outside=True), inside, atol=1e-5)
    assert np.allclose(distance_mm(~mask, spacing, edge_outside=False), outside, atol=1e-5)
    assert not np.array_equal(distance_mm(mask, spacing, edge_outside=False), inside)
    assert np.array_equal(erode_mm(mask, 2.0, spacing), inside > 2.0)
    assert np.array_equal(dilate_mm(mask, 2.0, spacing), outside <= 2.0)


def test_holes_are_filled_as_scipy_fills_them_in_3d_then_in_every_axial_slice():
    def scipy_fill(mask):
        filled = ndimage.binary_fill_holes(mask)
        for k in range(filled.shape[2]):
            filled[:, :, k] = ndimage.binary_fill_holes(filled[:, :, k])
        return filled

    rng = np.random.default_rng(5)
    for _ in range(60):
        mask = ndimage.binary_dilation(rng.random(tuple(rng.integers(1, 12, 3))) < rng.uniform(0.05, 0.5))
        assert np.array_equal(fill_holes(mask), scipy_fill(mask))
    # a ball with a cavity (a hole in 3D) and a tunnel along the axial axis (a hole only in-plane), open at both
    # ends; a notch open to the side of the volume is no hole
    z = np.ogrid[:40, :40, :20]
    mask = (z[0] - 20) ** 2 + (z[1] - 20) ** 2 + (z[2] - 10) ** 2 * 4 < 18**2
    mask &= (z[0] - 20) ** 2 + (z[1] - 20) ** 2 + (z[2] - 10) ** 2 >= 5**2
    mask &= (z[0] - 12) ** 2 + (z[1] - 20) ** 2 >= 3**2
    mask[:, :, 8:12] |= z[0] < 6
    mask[:2, 18:22, 8:12] = False
    filled = fill_holes(mask)
    assert filled[20, 20, 10] and filled[12, 20, 10] and not filled[0, 20, 10]
    assert np.array_equal(filled, scipy_fill(mask))


def test_a_neighbour_joined_through_a_neck_is_cut_off_and_a_lobe_joined_broadly_is_kept():
    shape = (90, 60, 60)
    liver = ball(shape, (30, 30, 30), 20)
    heart = ball(shape, (72, 30, 30), 12)  # joined through a 4-voxel-wide bridge: a neck a sixth of its depth
    bridge = np.zeros(shape, bool)
    bridge[48:62, 28:32, 28:32] = True
    cut = cut_at_necks(liver | heart | bridge, (1.0, 1.0, 1.0), neck_ratio=0.5, depth_mm=2.0)
    assert cut[liver].all() and not cut[heart].any()
    lobe = ball(shape, (55, 30, 30), 12)  # a lobe that merges into the liver as thick as itself
    kept = cut_at_necks(liver | lobe, (1.0, 1.0, 1.0), neck_ratio=0.5, depth_mm=2.0)
    assert kept[liver | lobe].all()
    assert cut_at_necks(np.zeros(shape, bool), (1.0, 1.0, 1.0), 0.5, 2.0).sum() == 0


def ellipsoid(shape, centre, radii):
    grid = np.indices(shape)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def body_with_liver_and_spleen(left_back_mm):
    """An abdomen in air (axes RAS+, 2.5 mm voxels): a liver on the right, its left lobe in front, and a spleen
    at its level left and behind, touching the lobe's tip; the neck check is off, to see this one alone."""
    shape = (140, 110, 40)
    rng = np.random.default_rng(0)
    ct = np.full(shape, -1000.0, np.float32)
    ct[ellipsoid(shape, (70, 55, 20), (62, 47, 60))] = -100.0  # fat, as tall as the volume
    liver = ellipsoid(shape, (100, 58, 20), (28, 24, 14)) | ellipsoid(shape, (62, 68, 20), (30, 13, 9))
    spleen = ellipsoid(shape, (37, 48, 20), (13, 16, 11))
    ct[liver | spleen] = 100.0
    ct += rng.normal(0.0, 5.0, shape).astype(np.float32)
    settings = with_changes(CLASSICAL, liver_left_back_mm=left_back_mm, liver_neck_ratio=0.0, liver_bay_mm=0.0)
    return ct, liver, spleen, settings


def test_the_spleen_left_of_and_behind_the_body_centre_is_not_liver_and_the_left_lobe_in_front_is():
    ct, liver, spleen, settings = body_with_liver_and_spleen(QUICK.segment.liver_left_back_mm)
    assert (liver & spleen).sum() > 100
    kept = segment_liver(ct, (2.5, 2.5, 2.5), with_changes(settings, liver_left_back_mm=None))
    assert kept[spleen].mean() > 0.9
    found = segment_liver(ct, (2.5, 2.5, 2.5), settings)
    assert found[spleen & ~liver].mean() < 0.05 and found[liver].mean() > 0.95 and dice(found, liver) > 0.95
    # a crop that cuts the body at the image's edge: no centre to measure from, nothing is dropped
    cropped = segment_liver(ct[20:], (2.5, 2.5, 2.5), settings)
    assert cropped[spleen[20:]].mean() > 0.9


@pytest.fixture(scope="module")
def phantoms():
    spec = with_changes(QUICK.cohort, seed=2019)
    plans = plan_cohort(spec)
    # 0, 4 and 7: the kidney, the inferior vena cava and the heart touch the liver (bench/organ_phantom.py)
    return [generate_patient(spec, plans[i]) for i in (0, 3, 4, 7)]


def test_classical_segmentation_of_phantoms_clears_the_floors(phantoms):
    lesion_dice, found, reference_count = [], 0, 0
    for case in phantoms:
        seg = classical_segmentation(case.image.astype(np.float32), case.spacing, CLASSICAL)
        assert dice(seg.liver, case.liver) >= LIVER_DICE_FLOOR, case.case_id
        assert (seg.liver & (case.organs > 0)).sum() <= 0.04 * case.liver.sum(), case.case_id  # no leak
        assert not (seg.lesions & ~seg.liver).any()  # lesions lie in the liver
        lesion_dice.append(dice(seg.lesions, case.mask > 0))
        reference, _ = instance_map(case.mask, case.case_id, "class")
        automatic, _ = instance_map(seg.lesions.astype(np.uint8), case.case_id, "binary")
        assert outside_liver(automatic, case.liver, case.spacing, CLASSICAL.outside_liver_mm) == [], case.case_id
        by_reference, _ = match_lesions(reference, automatic, CLASSICAL.detection_dice)
        volumes = np.bincount(reference.ravel()) * np.prod(case.spacing) / 1000.0
        for r, (_, _, hit) in by_reference.items():
            if volumes[r] >= 0.1:
                reference_count += 1
                found += hit
    assert np.mean(lesion_dice) >= LESION_DICE_FLOOR, lesion_dice
    assert found / reference_count >= RECALL_FLOOR


def test_classical_segmentation_finds_nothing_in_a_liver_without_lesions():
    shape = (80, 80, 40)
    rng = np.random.default_rng(0)
    image = np.full(shape, -100.0, np.float32) + rng.normal(0, 10, shape)
    liver = ball(shape, (40, 40, 20), 18)
    image[liver] = 110.0 + rng.normal(0, 10, int(liver.sum()))
    seg = classical_segmentation(image, (1.0, 1.0, 1.0), CLASSICAL)
    assert dice(seg.liver, liver) > 0.9
    assert not seg.lesions.any()


def smoothed_liver(liver, painted, seed):
    """A liver (110 HU) in fat with the ``(mask, HU)`` painted in it, noisy (12 HU) and smoothed (1 voxel)."""
    image = np.full(liver.shape, -100.0, np.float32)
    image[liver] = 110.0
    for mask, hu in painted:
        image[mask] = hu
    image += np.random.default_rng(seed).normal(0, 12, liver.shape).astype(np.float32)
    return ndimage.gaussian_filter(image, 1.0)  # the fat's blur makes a darker shell all round the liver too


def test_a_subcapsular_lesion_is_found_and_the_liver_s_blurred_rim_is_not():
    shape = (80, 80, 60)
    liver = ball(shape, (40, 40, 30), 22)
    # a 12 mm lesion under the capsule: none of it deeper than the edge band (liver_edge_mm 6) that no seed is in
    lesion = ball(shape, (40, 40 + 22 - 5, 30), 6) & liver
    smoothed = smoothed_liver(liver, [(lesion, 40.0)], seed=1)
    found = segment_lesions(smoothed, liver, (1.0, 1.0, 1.0), CLASSICAL)
    assert dice(found, lesion) > 0.6
    assert ndimage.label(found, np.ones((3, 3, 3)))[1] == 1  # the rim's shell is not a lesion
    without = segment_lesions(smoothed, liver, (1.0, 1.0, 1.0), with_changes(CLASSICAL, edge_lesion_mm=None))
    assert dice(without, lesion) < 0.2


def test_a_tumour_s_lighter_rim_around_its_darker_core_is_grown_into_the_lesion():
    shape = (80, 80, 60)
    liver = ball(shape, (40, 40, 30), 26)
    # a target: a 24 mm tumour whose rim is too light to seed (above the liver's level less hypodense_hu 35) but
    # below the half-way level between its 8 mm darker core and the liver, so the core's seed grows into it
    tumour = ball(shape, (40, 40, 30), 12)
    smoothed = smoothed_liver(liver, [(tumour, 83.0), (ball(shape, (40, 40, 30), 4), 66.0)], seed=2)
    found = segment_lesions(smoothed, liver, (1.0, 1.0, 1.0), CLASSICAL)
    assert dice(found, tumour) > 0.8
    narrow = segment_lesions(smoothed, liver, (1.0, 1.0, 1.0), with_changes(CLASSICAL, lesion_grow_mm=(3.0, 3.0)))
    assert dice(narrow, tumour) < 0.6  # the rim cut at a box 3 mm around the core


def test_a_faint_tumour_is_found_by_the_second_pass_and_a_faint_fleck_is_not():
    shape = (80, 80, 60)
    liver = ball(shape, (40, 40, 30), 26)
    # a liver of 110 HU with noise of 18 HU (a robust spread of 18): the first pass seeds only what lies 4.5
    # spreads (81 HU) below its level, the fainter pass 3 spreads (54 HU) below; lesions painted without noise
    image = np.full(shape, -100.0, np.float32)
    image[liver] = 110.0 + np.random.default_rng(7).normal(0, 18, shape)[liver]
    strong = ball(shape, (40, 30, 30), 6)  # 20 HU: 90 below the liver
    faint = ball(shape, (40, 52, 30), 6)  # 50 HU: 60 below, 0.9 mL
    fleck = ball(shape, (28, 40, 30), 3)  # 50 HU too, but 0.1 mL
    for mask, hu in ((strong, 20.0), (faint, 50.0), (fleck, 50.0)):
        image[mask] = hu
    found = segment_lesions(image, liver, (1.0, 1.0, 1.0), CLASSICAL)
    assert found[strong].all() and found[faint].all() and not found[fleck].any()  # the fleck: under faint_lesion_ml
    assert found.sum() < 1.5 * (strong.sum() + faint.sum())  # grown into the noise a little, no lesion of noise
    first_only = segment_lesions(image, liver, (1.0, 1.0, 1.0), with_changes(CLASSICAL, faint_noise_factor=None))
    assert first_only[strong].all() and not first_only[faint].any()


def test_a_faint_tumour_beside_a_darker_one_s_halo_is_found_only_when_it_grows_less_than_half_way():
    shape = (80, 80, 60)
    liver = ball(shape, (40, 40, 30), 26)
    image = np.full(shape, -100.0, np.float32)
    image[liver] = 110.0 + np.random.default_rng(8).normal(0, 18, shape)[liver]
    # a dark tumour (20 HU) in a lighter halo (78 HU, 3 mm), and a faint one (50 HU) against the halo's outside
    strong, halo = ball(shape, (40, 28, 30), 6), ball(shape, (40, 28, 30), 9)
    faint = ball(shape, (40, 43, 30), 6)
    for mask, hu in ((halo, 78.0), (strong, 20.0), (faint, 50.0)):
        image[mask] = hu
    found = segment_lesions(image, liver, (1.0, 1.0, 1.0), CLASSICAL)
    assert found[strong].all() and found[faint].all()
    assert dice(found & ~faint, strong) > 0.9  # apart: the halo is in neither
    # grown half-way (80 HU), the faint tumour takes the halo in, touches the dark one's lesion and is not added
    half_way = segment_lesions(image, liver, (1.0, 1.0, 1.0), with_changes(CLASSICAL, faint_lesion_level=0.5))
    assert half_way[strong].all() and not half_way[faint].any()


def test_a_tumour_at_the_liver_s_edge_is_kept_where_it_is_thick_and_the_rim_is_not():
    shape = (80, 80, 60)
    liver = ball(shape, (40, 40, 30), 26)
    # a 16 mm tumour reaching the capsule, light but for its core: grown from the core, it runs into the liver's
    # blurred rim, and less than half of what it reaches is deeper than the edge band (liver_edge_mm 6)
    tumour = ball(shape, (40, 40 + 26 - 8, 30), 8) & liver
    smoothed = smoothed_liver(liver, [(tumour, 83.0), (ball(shape, (40, 40 + 26 - 9, 30), 3), 60.0)], seed=3)
    found = segment_lesions(smoothed, liver, (1.0, 1.0, 1.0), CLASSICAL)
    assert dice(found, tumour) > 0.6
    assert ndimage.label(found, np.ones((3, 3, 3)))[1] == 1  # the rim's shell is trimmed off
    # the edge step alone makes the difference (the fainter pass, grown less, finds a quarter of it without)
    alone = with_changes(CLASSICAL, faint_noise_factor=None)
    assert dice(segment_lesions(smoothed, liver, (1.0, 1.0, 1.0), alone), tumour) > 0.6
    without = segment_lesions(smoothed, liver, (1.0, 1.0, 1.0), with_changes(alone, edge_lesion_mm=None))
    assert dice(without, tumour) < 0.2


def test_a_tumour_in_a_wide_bay_of_the_liver_is_taken_in_and_a_thin_wall_lining_a_bay_is_not():
    shape = (80, 80, 60)  # 2.5 mm voxels, the coarse grid itself
    rng = np.random.default_rng(4)
    ct = np.full(shape, -100.0, np.float32)
    liver = ball(shape, (40, 40, 30), 26)
    # a 40 mm tumour at the capsule: the dent it leaves in the liver's window is wider than a 15 mm closing fills
    tumour = ball(shape, (40, 61, 30), 8) & liver
    # on the other side a neighbour of fat pressing in, its one-voxel wall as dense as a tumour
    sac = ball(shape, (40, 16, 30), 6)
    wall = sac & ~ball(shape, (40, 16, 30), 5) & liver
    liver &= ~sac
    ct[liver] = 110.0
    ct[tumour] = 45.0
    ct[wall] = 40.0
    ct += rng.normal(0, 5, shape).astype(np.float32)
    bays = with_changes(CLASSICAL, liver_bulge_contact=None)  # the bay step alone (the bulge step takes it in too)
    found = segment_liver(ct, (2.5, 2.5, 2.5), bays)
    assert found[tumour].mean() > 0.4 and found[wall].mean() < 0.1
    assert segment_liver(ct, (2.5, 2.5, 2.5), with_changes(bays, liver_bay_mm=15.0))[tumour].mean() < 0.1
    assert segment_liver(ct, (2.5, 2.5, 2.5), with_changes(bays, liver_bay_opening_mm=None))[wall].mean() > 0.5
    assert segment_liver(ct, (2.5, 2.5, 2.5), CLASSICAL)[wall].mean() < 0.1  # nor does the bulge step take the wall


def test_a_tumour_bulging_out_of_the_liver_is_taken_in_and_a_neighbour_touching_it_is_not():
    shape = (100, 100, 80)  # 1 mm voxels
    whole = ball(shape, (50, 50, 40), 26)
    # a 22 mm tumour on the capsule, half of it outside: the liver found (its window) stops at the tumour
    tumour = ball(shape, (50, 76, 40), 11)
    # a neighbour at a tumour's CT numbers (a bowel loop, the kidney) touching the liver at one place
    neighbour = ball(shape, (50, 13, 40), 10)
    smoothed = smoothed_liver(whole, [(tumour, 50.0), (neighbour, 50.0)], seed=5)
    liver = whole & ~tumour
    found = with_bulging_tumours(liver, smoothed, (1.0, 1.0, 1.0), CLASSICAL)
    assert found[tumour].mean() > 0.8 and found[neighbour].mean() < 0.05
    assert (found & liver).sum() == liver.sum()  # the liver only grows
    off = with_bulging_tumours(liver, smoothed, (1.0, 1.0, 1.0), with_changes(CLASSICAL, liver_bulge_contact=None))
    assert off[tumour & ~whole].mean() < 0.05
    touching_enough = with_changes(CLASSICAL, liver_bulge_contact=0.0)
    assert with_bulging_tumours(liver, smoothed, (1.0, 1.0, 1.0), touching_enough)[neighbour].mean() > 0.5


def test_ingest_with_classical_segmentation_labels_lesions_by_reference_and_splits_the_same_patients(tmp_path):
    spec = with_changes(QUICK.cohort, seed=7, n_patients=12, n_lesions=36, size_scale=0.5)
    cohort = generate_cohort(spec, tmp_path / "cohort", workers=2)
    auto = ingest_cases(cohort, "v", crop_margin_mm=2.0, segment=CLASSICAL, workers=2)
    reference = ingest_cases(cohort, "v", crop_margin_mm=2.0, workers=2)
    assert auto.crops.source == "classical" and reference.crops.source == "reference"
    assert reference.segmentation_cases.empty and len(auto.segmentation_cases) == 12
    assert auto.segmentation_cases["liver_dice"].min() > 0.9  # the phantom's liver masks are read and compared
    lesions, invented = labelled_lesions(segment_cases(auto.cases, auto.crops))
    outcomes = auto.segmentation_lesions.set_index("lesion_id")["outcome"]
    assert set(outcomes[lesions["lesion_id"]]) == {"matched"}
    assert set(outcomes[invented["lesion_id"]]) <= {"invented"}
    # a matched automatic lesion has the class of the reference lesion it lies in
    partners = auto.segmentation_lesions.set_index("lesion_id")["partner"]
    ref_labels = auto.segmentation_lesions.set_index("lesion_id")["label"]
    for row in lesions.itertuples():
        assert row.label == ref_labels[partners[row.lesion_id]]

    ref_lesions, _ = labelled_lesions(segment_cases(reference.cases, reference.crops))
    by_reference = split_lesions(ref_lesions, 0.2, 0.2, 2019)
    by_auto = split_like_reference(lesions, auto.segmentation_lesions.query("kind == 'reference'"), 0.2, 0.2, 2019)
    for name in ("train", "val", "test"):
        auto_patients = set(by_auto.loc[by_auto["set"] == name, "patient_key"])
        assert auto_patients <= set(by_reference.loc[by_reference["set"] == name, "patient_key"])


def test_a_lesion_is_outside_the_liver_only_when_no_voxel_of_it_is_near_the_liver():
    from liverlesion.segmentation import outside_liver

    liver = np.zeros((60, 60, 30), bool)
    liver[10:30, 10:30, 5:25] = True
    lesions = np.zeros(liver.shape, np.int32)
    lesions[12:14, 12:14, 10:12] = 1  # inside
    lesions[35:37, 15:17, 10:12] = 2  # 6 mm beyond the liver's face: near it
    lesions[50:52, 50:52, 10:12] = 3  # far
    assert outside_liver(lesions, liver, (1.0, 1.0, 1.0), 10.0) == [3]
    assert outside_liver(lesions, liver, (1.0, 1.0, 1.0), 5.0) == [2, 3]
    assert outside_liver(lesions, np.zeros_like(liver), (1.0, 1.0, 1.0), 10.0) == [1, 2, 3]
    assert outside_liver(np.zeros_like(lesions), liver, (1.0, 1.0, 1.0), 10.0) == []
