from pathlib import Path

import pytest

from liverlesion.config import ConfigError, load_profile

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_profiles_load():
    quick = load_profile(CONFIGS / "quick.yaml")
    paper = load_profile(CONFIGS / "paper.yaml")
    assert quick.name == "quick" and paper.name == "paper"
    assert quick.cohort.n_patients == 63 and quick.cohort.n_lesions == 230
    # the paper profile holds only differences from quick
    assert paper.patches.size == (252, 210) and paper.train.epochs == 103 and paper.train.batch_size == 8
    assert paper.train.weights == "imagenet" and paper.train.dropout == 0.4 and paper.train.dense_units == 512
    assert paper.train.bn_momentum is None and quick.train.bn_momentum == 0.9
    assert paper.split == quick.split


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_misspelt_key_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epoch: Extra inputs are not permitted"):
        load_profile(write(tmp_path, "name: x\ntrain:\n  epoch: 3\n"))


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.batch_size: Input should be a valid integer"):
        load_profile(write(tmp_path, "name: x\ntrain:\n  batch_size: eight\n"))


def test_unknown_section_and_bad_range(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_profile(write(tmp_path, "name: x\ntrainning: {}\nsplit:\n  test_fraction: 0.9\n"))
    assert "trainning" in str(err.value) and "split.test_fraction" in str(err.value)


def test_extends_merges_and_overrides(tmp_path):
    write(tmp_path, "name: base\ntrain:\n  epochs: 7\n  batch_size: 4\n", "base.yaml")
    child = load_profile(write(tmp_path, "extends: base\nname: child\ntrain:\n  epochs: 2\n"))
    assert child.train.epochs == 2 and child.train.batch_size == 4
    with_override = load_profile(tmp_path / "base.yaml", {"train": {"epochs": 1}})
    assert with_override.train.epochs == 1


def test_missing_parent_and_profile(tmp_path):
    with pytest.raises(ConfigError, match="extends 'nope'"):
        load_profile(write(tmp_path, "extends: nope\n"))
    with pytest.raises(ConfigError, match="no profile"):
        load_profile(tmp_path / "absent.yaml")


def test_patch_shape_must_match_patches(tmp_path):
    with pytest.raises(ConfigError, match="patch_shape"):
        load_profile(
            write(tmp_path, "name: x\npatches:\n  output_size: [96, 80]\nvalidation:\n  patch_shape: [80, 80]\n")
        )


def test_compare_section_chooses_table2_models_and_their_weights():
    from liverlesion.zoo import TABLE2_MODELS

    profile = load_profile("quick", {"compare": {"imagenet_weights": {"inception_v3": "/w/iv3.h5"}}})
    assert profile.compare.models == tuple(TABLE2_MODELS)
    proposed = profile.compare.train_config("inception_v3_ipw", profile.train)
    assert (proposed.backbone, proposed.weights) == ("inception_v3", "/w/iv3.h5")
    irv2 = profile.compare.train_config("inception_resnet_v2_ipw", profile.train)
    assert (irv2.backbone, irv2.weights) == ("inception_resnet_v2", "imagenet")  # the Keras cache
    npw = profile.compare.train_config("inception_resnet_v2_npw", profile.train)
    assert npw.weights is None and npw.epochs == profile.train.epochs  # everything else from train
    with pytest.raises(ValueError, match="not a CNN"):
        profile.compare.train_config("svm_texture", profile.train)
    # the report says what each row started from
    assert profile.compare.initialisation("inception_v3_ipw", profile.train) == "initial weights from /w/iv3.h5"
    assert (
        profile.compare.initialisation("inception_resnet_v2_ipw", profile.train)
        == "ImageNet weights from the Keras cache"
    )
    assert profile.compare.initialisation("inception_v3_npw", profile.train) == "random initial weights (NPW)"
    assert "SVM" in profile.compare.initialisation("svm_texture", profile.train)


def test_unknown_or_repeated_compare_models_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"compare.models: .*unknown model\(s\) \['resnet50'\]"):
        load_profile("quick", {"compare": {"models": ["svm_texture", "resnet50"]}})
    with pytest.raises(ConfigError, match="listed twice"):
        load_profile("quick", {"compare": {"models": ["svm_texture", "svm_texture"]}})


def test_class_balance_bounds_hold_for_reference_masks_only():
    reference = load_profile("quick")
    assert reference.validation_rules() == reference.validation
    automatic = load_profile("quick", {"segment": {"method": "classical"}})
    rules = automatic.validation_rules()
    assert (rules.min_metastasis_fraction, rules.max_metastasis_fraction) == (0.0, 1.0)
    assert (
        rules.model_copy(update={"min_metastasis_fraction": 0.3, "max_metastasis_fraction": 0.7})
        == reference.validation
    )
