"""The promotion gate: whether a newly trained version may replace the champion.

Pure decision logic; the registry (aliases, records, locking) is ``liverlesion_ops.registry``.
Both models are scored on the same lesions before this is asked (see ``gate_scores``), so the
figures compared are like for like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

#: the outcomes of the gate: promoted to champion, kept as challenger (margin), refused (a floor)
Outcome = Literal["promoted", "challenger", "refused"]
#: decimals the gate compares at (and the registry's metric tags keep): a retrained tie stays a tie
DECIMALS = 6


@dataclass(frozen=True)
class GateRules:
    primary_metric: str
    min_margin: float
    floors: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str

    @property
    def promote(self) -> bool:
        return self.outcome == "promoted"


def _fmt(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.4f}"


def decide(candidate: Mapping[str, float], champion: Mapping[str, float] | None, rules: GateRules) -> Decision:
    """The gate's decision for ``candidate`` (metrics, higher is better) against the champion's
    metrics on the same lesions (None: there is no champion yet).

    Floors first (a version below a floor is refused, also the first one); then the primary metric
    must beat the champion's by more than ``min_margin``. A NaN candidate value never passes.
    """
    low = [
        f"{name} {_fmt(candidate[name])} < floor {floor:.4f}"
        for name, floor in sorted(rules.floors.items())
        if not round(candidate[name], DECIMALS) >= floor
    ]  # NaN fails too
    if low:
        return Decision("refused", "refused by floor: " + "; ".join(low))
    metric = rules.primary_metric
    value = round(candidate[metric], DECIMALS)
    if math.isnan(value):  # e.g. ROC AUC on lesions of one class: nothing to stand on, also for a first version
        held = "no champion yet" if champion is None else f"the champion's is {_fmt(round(champion[metric], DECIMALS))}"
        return Decision("challenger", f"{metric} is NaN on the gate's lesions; {held}")
    if champion is None:
        return Decision("promoted", f"first version to pass the gate: no champion yet ({metric} {_fmt(value)})")
    incumbent = round(champion[metric], DECIMALS)
    margin = f" by more than {rules.min_margin:.4f}" if rules.min_margin else ""
    # the gain is compared at the same precision as the values: 0.8 vs 0.7 is a gain of 0.1, not more
    if math.isnan(incumbent) or round(value - incumbent, DECIMALS) > rules.min_margin:
        return Decision("promoted", f"{metric} {_fmt(value)} beats the champion's {_fmt(incumbent)}{margin}")
    return Decision("challenger", f"{metric} {_fmt(value)} does not beat the champion's {_fmt(incumbent)}{margin}")


def gate_scores(labels: pd.Series, probability: pd.Series, threshold: float) -> dict[str, float]:
    """The seven metrics of one model on the gate's lesions (``labels`` and ``probability`` by lesion id).

    Raises:
        ValueError: a lesion without a probability (the model was not scored on the same lesions).
    """
    missing = labels.index.difference(probability.index)
    if len(missing):
        raise ValueError(f"{len(missing)} lesion(s) of the gate's set were not scored, e.g. {list(missing[:3])}")
    p = probability.loc[labels.index].to_numpy(dtype=float)
    from liverlesion.metrics import classification_metrics  # scikit-learn: not for the registry's readers

    return classification_metrics(labels.to_numpy(dtype=np.int64), p, threshold)
