"""The promotion gate's pure decision (``decide``) and its like-for-like scoring (``gate_scores``)."""

import math

import numpy as np
import pandas as pd
import pytest

from liverlesion.metrics import classification_metrics
from liverlesion.promotion import DECIMALS, Decision, GateRules, decide, gate_scores

METRICS = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "precision", "recall", "specificity")


def figures(roc_auc: float, **more: float) -> dict[str, float]:
    """A full metric dict (all seven) with the given primary value."""
    return {**{name: 0.5 for name in METRICS}, "roc_auc": roc_auc, **more}


def test_the_first_version_is_promoted():
    decision = decide(figures(0.7), None, GateRules("roc_auc", 0.0))
    assert decision == Decision("promoted", decision.reason) and decision.promote
    assert "no champion yet" in decision.reason


def test_floors_refuse_also_the_first_version():
    rules = GateRules("roc_auc", 0.0, floors={"recall": 0.6, "specificity": 0.5})
    first = decide(figures(0.9, recall=0.4), None, rules)
    assert first.outcome == "refused" and not first.promote
    assert first.reason.startswith("refused by floor") and "recall 0.4000 < floor 0.6000" in first.reason
    assert "specificity" not in first.reason  # only the floors that are not met are named
    later = decide(figures(0.99, recall=0.4, specificity=0.1), figures(0.6), rules)
    assert later.outcome == "refused"
    assert "recall 0.4000 < floor 0.6000" in later.reason and "specificity 0.1000 < floor 0.5000" in later.reason
    # a floor that is met exactly passes (and a value a rounding step below it counts as met)
    assert decide(figures(0.9, recall=0.6), figures(0.6), rules).promote
    assert decide(figures(0.9, recall=0.6 - 10 ** -(DECIMALS + 2)), figures(0.6), rules).promote


def test_a_nan_floor_metric_is_refused():
    decision = decide(figures(0.9, recall=math.nan), None, GateRules("roc_auc", 0.0, floors={"recall": 0.0}))
    assert decision.outcome == "refused" and "recall NaN" in decision.reason


def test_a_nan_candidate_never_replaces_a_champion():
    decision = decide(figures(math.nan), figures(0.5), GateRules("roc_auc", 0.0))
    assert decision.outcome == "challenger" and "NaN" in decision.reason
    assert not decide(figures(math.nan), figures(math.nan), GateRules("roc_auc", 0.0)).promote


def test_a_nan_first_version_is_not_promoted():
    assert not decide(figures(math.nan), None, GateRules("roc_auc", 0.0)).promote


def test_a_champion_with_a_nan_primary_metric_is_replaced():
    assert decide(figures(0.6), figures(math.nan), GateRules("roc_auc", 0.0)).promote


def test_only_a_strict_improvement_promotes():
    better = decide(figures(0.81), figures(0.80), GateRules("roc_auc", 0.0))
    assert better.promote and "beats the champion's 0.8000" in better.reason
    tie = decide(figures(0.80), figures(0.80), GateRules("roc_auc", 0.0))
    assert tie.outcome == "challenger" and "does not beat" in tie.reason
    worse = decide(figures(0.70), figures(0.80), GateRules("roc_auc", 0.0))
    assert worse.outcome == "challenger" and "does not beat" in worse.reason


def test_a_tie_after_rounding_stays_a_tie():
    tiny = 10 ** -(DECIMALS + 2)  # below the compared precision
    assert decide(figures(0.8 + tiny), figures(0.8), GateRules("roc_auc", 0.0)).outcome == "challenger"
    assert decide(figures(2 / 9), figures(round(2 / 9, DECIMALS)), GateRules("roc_auc", 0.0)).outcome == "challenger"
    # one step of the compared precision is an improvement
    assert decide(figures(0.8 + 10**-DECIMALS), figures(0.8), GateRules("roc_auc", 0.0)).promote


def test_min_margin_is_respected():
    rules = GateRules("roc_auc", min_margin=0.05)
    kept = decide(figures(0.84), figures(0.80), rules)
    assert kept.outcome == "challenger" and "by more than 0.0500" in kept.reason
    assert decide(figures(0.86), figures(0.80), rules).promote
    # the margin does not apply to the first version
    assert decide(figures(0.51), None, rules).promote


def test_another_primary_metric():
    rules = GateRules(primary_metric="balanced_accuracy", min_margin=0.0)
    decision = decide(figures(0.1, balanced_accuracy=0.9), figures(0.9, balanced_accuracy=0.8), rules)
    assert decision.promote and "balanced_accuracy 0.9000" in decision.reason


def test_gate_scores_are_the_metrics_on_the_gate_lesions_in_their_order():
    labels = pd.Series([0, 1, 1, 0, 1], index=["a", "b", "c", "d", "e"])
    probability = pd.Series([0.9, 0.2, 0.7, 0.4, 0.6, 0.99], index=["e", "d", "c", "b", "a", "other"])
    scores = gate_scores(labels, probability, 0.5)
    expected = classification_metrics(labels.to_numpy(), np.array([0.6, 0.4, 0.7, 0.2, 0.9]), 0.5)
    assert scores == pytest.approx(expected)
    assert set(scores) == set(METRICS)


def test_gate_scores_refuse_a_set_that_was_not_fully_scored():
    labels = pd.Series([0, 1, 1], index=["a", "b", "c"])
    probability = pd.Series([0.1, 0.8], index=["a", "b"])
    with pytest.raises(ValueError, match=r"1 lesion\(s\) of the gate's set were not scored.*'c'"):
        gate_scores(labels, probability, 0.5)


def test_a_gain_of_exactly_the_margin_is_not_more_than_it():
    assert decide(figures(0.8), figures(0.7), GateRules("roc_auc", min_margin=0.1)).outcome == "challenger"
