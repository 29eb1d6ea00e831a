"""The project's own profiles, as the tests read them (``configs/``): one home for every value a test does not
choose itself."""

from pathlib import Path

from liverlesion.config import Profile, load_profile

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def profile(name: str = "quick", overrides: dict | None = None) -> Profile:
    """A profile of the project's ``configs/`` (``quick`` by default), with ``overrides`` merged in."""
    return load_profile(name, CONFIGS, overrides)


QUICK = profile()


def with_changes(section, **changes):
    """A profile section (a settings object) with ``changes``, validated as a profile's would be."""
    import dataclasses

    if dataclasses.is_dataclass(section):
        return dataclasses.replace(section, **changes)
    return type(section).model_validate({**section.model_dump(), **changes})


def network(input_shape, backbone: str = "inception_v3", weights: str | None = None, bn_momentum: float | None = None):
    """A backbone with the profile's head (``train.dense_units``, ``train.dropout``) on ``input_shape``."""
    from liverlesion.model import build_model

    return build_model(input_shape, backbone, weights, QUICK.train.dense_units, QUICK.train.dropout, bn_momentum)
