"""The promotion gate: a new model version becomes champion only if it beats the current one."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def decide_promotion(
    metric: str, candidate: float, champion: float | None, min_improvement: float = 0.0
) -> PromotionDecision:
    """Promote the first version, and later only a strict improvement on ``metric`` (higher is better).

    A NaN candidate (e.g. ROC AUC on a one-class test set) is never promoted over a champion.
    """
    if champion is None:
        return PromotionDecision(True, f"first version: no champion yet ({metric} = {candidate:.4f})")
    if math.isnan(candidate):
        return PromotionDecision(False, f"{metric} is NaN; the champion's is {champion:.4f}")
    if math.isnan(champion) or candidate > champion + min_improvement:
        return PromotionDecision(True, f"{metric} {candidate:.4f} beats the champion's {champion:.4f}")
    return PromotionDecision(False, f"{metric} {candidate:.4f} does not beat the champion's {champion:.4f}")
