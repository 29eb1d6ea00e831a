"""Profiles: every value in one place (configs/), validated into typed sections that hold no value of their own."""

import dataclasses
import shutil
import typing

import pytest
import yaml
from pydantic import BaseModel

from liverlesion.config import ConfigError, Profile, load_profile
from liverlesion.protocol import Protocol
from tests.profiles import CONFIGS


def test_shipped_profiles_load():
    quick = load_profile("quick", CONFIGS)
    paper = load_profile("paper", CONFIGS)
    assert quick.name == "quick" and paper.name == "paper"
    assert quick.cohort.n_patients == 63 and quick.cohort.n_lesions == 230
    assert paper.patches.size == (252, 210) and paper.train.epochs == 103 and paper.train.batch_size == 8
    assert paper.train.weights == "imagenet" and paper.train.dropout == 0.4 and paper.train.dense_units == 512
    assert paper.train.bn_momentum is None and quick.train.bn_momentum == 0.9
    assert paper.split == quick.split


def test_both_profiles_extend_base_and_hold_only_their_differences():
    """A value lives in base.yaml or in a profile, never in both; the paper's protocol does not extend quick."""
    base = yaml.safe_load((CONFIGS / "base.yaml").read_text())

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    shared = dict(leaves(base))
    for name in ("quick", "paper"):
        raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert raw.pop("extends") == "base"
        repeated = {key: value for key, value in leaves(raw) if key in shared and shared[key] == value}
        assert repeated == {}, f"{name}.yaml repeats base.yaml's values: {repeated}"


def test_every_seed_of_a_profile_follows_the_cohort_seed():
    """One seed written once (a YAML anchor in base.yaml): the split, training, bootstrap and cascade follow it."""
    quick = load_profile("quick", CONFIGS)
    seeds = {quick.cohort.seed, quick.split.seed, quick.train.seed, quick.evaluate.bootstrap.seed, quick.segmenter.seed}
    assert seeds == {2019}
    assert (CONFIGS / "base.yaml").read_text().count("2019") == 1


def _sections(model: type) -> list[type]:
    """The settings classes a profile is made of, recursively (pydantic sections and dataclasses)."""
    found = []
    for field in model.model_fields.values():
        for kind in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found += [kind, *_sections(kind)]
            elif dataclasses.is_dataclass(kind):
                found.append(kind)
    return found


def test_no_settings_class_holds_a_value_of_its_own():
    """The sections say type, bounds and meaning; their values come from the profile alone (no second default)."""
    with_defaults = []
    for section in {*_sections(Profile), Protocol}:
        if dataclasses.is_dataclass(section):
            with_defaults += [
                f"{section.__name__}.{f.name}"
                for f in dataclasses.fields(section)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            ]
        else:
            with_defaults += [
                f"{section.__name__}.{name}" for name, f in section.model_fields.items() if not f.is_required()
            ]
    assert with_defaults == []
    assert [name for name, f in Profile.model_fields.items() if not f.is_required()] == ["description"]


@pytest.fixture()
def configs(tmp_path):
    """A project's configs/ of its own: base.yaml as shipped, and room for test profiles."""
    shutil.copy(CONFIGS / "base.yaml", tmp_path / "base.yaml")
    shutil.copy(CONFIGS / "quick.yaml", tmp_path / "quick.yaml")
    return tmp_path


def write(folder, text, name="p.yaml"):
    path = folder / name
    path.write_text(text)
    return path


def test_misspelt_key_names_the_key(configs):
    with pytest.raises(ConfigError, match=r"train\.epoch: Extra inputs are not permitted"):
        load_profile(write(configs, "extends: quick\ntrain:\n  epoch: 3\n"), configs)


def test_wrong_type_names_the_key(configs):
    with pytest.raises(ConfigError, match=r"train\.batch_size: Input should be a valid integer"):
        load_profile(write(configs, "extends: quick\ntrain:\n  batch_size: eight\n"), configs)


def test_a_missing_setting_is_named_not_defaulted(configs):
    """base.yaml holds no epochs (each profile says its own): a profile that extends base alone must say it."""
    with pytest.raises(ConfigError) as err:
        load_profile(write(configs, "extends: base\n"), configs)
    assert "train.epochs: Field required" in str(err.value) and "patches.canvas: Field required" in str(err.value)


def test_unknown_section_and_bad_range(configs):
    with pytest.raises(ConfigError) as err:
        load_profile(write(configs, "extends: quick\ntrainning: {}\nsplit:\n  test_fraction: 0.9\n"), configs)
    assert "trainning" in str(err.value) and "split.test_fraction" in str(err.value)


def test_extends_merges_and_overrides(configs):
    child = load_profile(write(configs, "extends: quick\nname: child\ntrain:\n  epochs: 2\n"), configs)
    assert child.name == "child" and child.train.epochs == 2 and child.train.batch_size == 8
    with_override = load_profile("quick", configs, {"train": {"epochs": 1}})
    assert with_override.train.epochs == 1


def test_missing_parent_and_profile(configs):
    with pytest.raises(ConfigError, match="extends 'nope'"):
        load_profile(write(configs, "extends: nope\n"), configs)
    with pytest.raises(ConfigError, match="no profile 'absent'.*available: base, p, quick"):
        load_profile("absent", configs)


def test_the_patch_shape_is_derived_from_the_patches_not_written_twice(configs):
    quick = load_profile("quick", configs)
    assert quick.patches.size == (96, 80)
    resized = load_profile("quick", configs, {"patches": {"output_size": [75, 75]}})
    assert resized.patches.size == (75, 75)
    with pytest.raises(ConfigError, match=r"validation\.patch_shape: Extra inputs are not permitted"):
        load_profile("quick", configs, {"validation": {"patch_shape": [96, 80]}})


def test_one_rate_policy():
    with pytest.raises(ConfigError, match="cannot also be cut on a plateau"):
        load_profile("quick", CONFIGS, {"train": {"lr_patience": 5}})


def test_compare_section_chooses_table2_models_and_their_weights():
    from liverlesion.zoo import TABLE2_MODELS

    profile = load_profile("quick", CONFIGS, {"compare": {"imagenet_weights": {"inception_v3": "/w/iv3.h5"}}})
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


def test_unknown_or_repeated_compare_models_are_named():
    with pytest.raises(ConfigError, match=r"compare.models: .*unknown model\(s\) \['resnet50'\]"):
        load_profile("quick", CONFIGS, {"compare": {"models": ["svm_texture", "resnet50"]}})
    with pytest.raises(ConfigError, match="listed twice"):
        load_profile("quick", CONFIGS, {"compare": {"models": ["svm_texture", "svm_texture"]}})


def test_class_balance_bounds_hold_for_reference_masks_only():
    reference = load_profile("quick", CONFIGS)
    assert reference.validation_rules() == reference.validation
    automatic = load_profile("quick", CONFIGS, {"segment": {"method": "classical"}})
    rules = automatic.validation_rules()
    assert (rules.min_metastasis_fraction, rules.max_metastasis_fraction) == (0.0, 1.0)
    assert (
        rules.model_copy(update={"min_metastasis_fraction": 0.3, "max_metastasis_fraction": 0.7})
        == reference.validation
    )
