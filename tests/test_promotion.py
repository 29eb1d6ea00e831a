import math

from liverlesion.promotion import decide_promotion


def test_first_version_becomes_champion():
    assert decide_promotion("roc_auc", 0.7, None).promote


def test_only_a_strict_improvement_promotes():
    assert decide_promotion("roc_auc", 0.81, 0.80).promote
    tie = decide_promotion("roc_auc", 0.80, 0.80)
    assert not tie.promote and "does not beat" in tie.reason
    assert not decide_promotion("roc_auc", 0.7, 0.8).promote


def test_nan_never_replaces_a_champion():
    assert not decide_promotion("roc_auc", math.nan, 0.5).promote
