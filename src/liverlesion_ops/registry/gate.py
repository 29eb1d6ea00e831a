"""The promotion gate: a newly trained version and the champion scored by their registered artefacts on the
same lesions, the decision recorded, and the aliases moved only then."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from liverlesion.promotion import DECIMALS, Decision, GateRules, decide, gate_scores
from liverlesion.segmentation import REFERENCE_SUFFIX
from liverlesion_ops import project
from liverlesion_ops.registry.decisions import decide_and_record, decision_tags, registry_lock
from liverlesion_ops.registry.registration import (
    COMPLETE,
    FINGERPRINT_PENDING,
    INCOMPLETE,
    REGISTRATION_STATE,
    discard_failed,
    load_registered_predictor,
    register_version,
)
from liverlesion_ops.registry.store import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    acting_user,
    alias_version,
    aliases,
    registry_client,
    timestamp,
)


@dataclass(frozen=True)
class GateSet:
    """The lesions the gate scores both models on: labels by lesion id, the cases holding them."""

    labels: pd.Series
    cases: pd.DataFrame
    description: str  # e.g. "the test split of v3 (46 lesions, 13 patients)"
    lesions: pd.DataFrame | None = None  # contract.LESION_COLUMNS of the typed lesions (a pinned cohort)


def split_gate_set(
    manifest: pd.DataFrame,
    manifest_hash: str,
    cases: pd.DataFrame,
    lesions: pd.DataFrame,
    segmentation_lesions: pd.DataFrame | None = None,
) -> GateSet:
    """The test split of a run (``splitting`` manifest; ``lesions`` maps lesion ids to cases).

    A run whose lesions came from automatic segmentation is gated on the reference lesions of its
    test patients (``segmentation_lesions``): the registered model scores a CT's lesions from its
    reference mask, and champion and challenger are compared on the same, drawn, lesions.
    """
    reference = (
        segmentation_lesions[segmentation_lesions["kind"] == "reference"]
        if segmentation_lesions is not None
        else pd.DataFrame()
    )
    if not reference.empty:
        test_patients = set(manifest.loc[manifest["set"] == "test", "patient_key"])
        drawn = reference[reference["patient_key"].isin(test_patients) & reference["label"].notna()]
        labels = pd.Series(
            drawn["label"].astype(int).to_numpy(),
            index=drawn["lesion_id"].str.removesuffix(REFERENCE_SUFFIX),
            name="label",
        )
        return GateSet(
            labels,
            cases[cases["case_id"].isin(set(drawn["case_id"]))],
            f"the reference lesions of the test patients of split {manifest_hash[:12]} ({len(drawn)} "
            f"lesions, {len(test_patients)} patient(s))",
        )
    test = manifest[manifest["set"] == "test"]
    case_ids = set(lesions.loc[lesions["lesion_id"].isin(set(test["lesion_id"])), "case_id"])
    return GateSet(
        test.set_index("lesion_id")["label"],
        cases[cases["case_id"].isin(case_ids)],
        f"the test split {manifest_hash[:12]} of this run ({len(test)} lesions, "
        f"{test['patient_key'].nunique()} patient(s))",
    )


def cohort_gate_set(folder: str | Path) -> GateSet:
    """A pinned evaluation cohort (a cohort folder; relative paths from the project root): its typed lesions.

    Raises:
        ContractError: the folder breaks the data contract, naming the case.
    """
    from liverlesion.ingestion import ingest_cases, labelled_lesions, segment_cases, types_by_case

    root = Path(folder) if Path(folder).is_absolute() else project.project_root() / folder
    ingested = ingest_cases(root, "pinned")
    lesions, _ = labelled_lesions(segment_cases(ingested.cases, ingested.crops, types_by_case(ingested.lesion_types)))
    return GateSet(
        lesions.set_index("lesion_id")["label"],
        ingested.cases,
        f"the pinned evaluation cohort {root} ({len(lesions)} typed lesions, "
        f"{lesions['patient_key'].nunique()} patient(s))",
        lesions,
    )


def score_version(name: str, version: str, gate_set: GateSet) -> tuple[dict[str, float], str]:
    """A version's metrics on the gate's lesions, by its registered artefact; and the precision used."""
    predictor = load_registered_predictor(name, version)
    probability = predictor.score_cases(gate_set.cases, set(gate_set.labels.index))
    return gate_scores(gate_set.labels, probability, predictor.threshold), predictor.precision


def gate(
    name: str,
    version: str,
    gate_set: GateSet,
    rules: GateRules,
    experiment: str,
    job: str,
    context: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Score version ``version`` and the champion on the same lesions, decide, record, move aliases.

    Returns:
        The decision's record: outcome, reason, both versions' figures, the aliases afterwards.
    """
    with registry_lock(name, f"gate of v{version} ({job})") as mlflow_client:
        champion = alias_version(mlflow_client, name, CHAMPION)
        registered = mlflow_client.get_model_version(name, version).tags
        completion = {}  # an incomplete registration is complete once its decision is recorded
        if registered.get(REGISTRATION_STATE) == INCOMPLETE:
            completion = {
                REGISTRATION_STATE: COMPLETE,
                **({"fingerprint": registered[FINGERPRINT_PENDING]} if FINGERPRINT_PENDING in registered else {}),
            }
        candidate, precision = score_version(name, version, gate_set)
        incumbent, incumbent_precision = (
            score_version(name, champion, gate_set) if champion is not None else (None, None)
        )
        decision: Decision = decide(candidate, incumbent, rules)
        at, by = timestamp(), acting_user()
        figures = {f"gate.candidate.{k}": f"{v:.{DECIMALS}f}" for k, v in candidate.items()}
        if incumbent is not None:
            figures.update({f"gate.champion.{k}": f"{v:.{DECIMALS}f}" for k, v in incumbent.items()})
        scored_on = f"{gate_set.description}; scored by the registered artefacts in {precision}" + (
            f" (champion: {incumbent_precision})" if incumbent_precision not in (None, precision) else ""
        )
        tags = decision_tags(
            decision.outcome,
            decision.reason,
            job,
            by,
            at,
            **figures,
            compared_with=f"v{champion}" if champion else "none",
            gate_scored_on=scored_on,
            gate_rules=json.dumps(
                {"primary_metric": rules.primary_metric, "min_margin": rules.min_margin, "floors": dict(rules.floors)}
            ),
        )
        moves: dict[str, str | None] = {}
        version_tags = {version: {**tags, **completion}}
        if decision.outcome == "promoted":
            moves = {CHAMPION: version}
            if champion is not None:
                moves[PREVIOUS_CHAMPION] = champion
                version_tags[champion] = decision_tags(
                    "superseded", f"v{version} passed the gate: {decision.reason}", job, by, at
                )
            if alias_version(mlflow_client, name, CHALLENGER) is not None:
                moves[CHALLENGER] = None  # it lost to the champion now replaced: no contender until the next one
        elif decision.outcome == "challenger":
            moves = {CHALLENGER: version}
        metrics = {f"candidate_{k}": v for k, v in candidate.items()}
        metrics.update({f"champion_{k}": v for k, v in (incumbent or {}).items()})
        entry = {
            "tags": version_tags,
            "aliases": moves,
            "run": {
                "experiment": experiment,
                "name": f"gate-v{version}",
                "tags": {
                    "job": job,
                    "model_name": name,
                    "model_version": version,
                    "decision": decision.outcome,
                    "decision_reason": decision.reason,
                    "compared_with": tags["compared_with"],
                    "decision_by": by,
                    **(context or {}),
                },
                "params": {
                    "primary_metric": rules.primary_metric,
                    "min_margin": rules.min_margin,
                    "floors": json.dumps(dict(rules.floors)),
                    "scored_on": scored_on[:500],
                },
                "metrics": {k: v for k, v in metrics.items() if v == v},
            },  # MLflow refuses no NaN, but keep it clean
        }
        decide_and_record(mlflow_client, name, entry)
        return {
            "version": version,
            "decision": decision.outcome,
            "reason": decision.reason,
            "compared_with": champion,
            "candidate": candidate,
            "champion": incumbent,
            "scored_on": scored_on,
            "aliases": aliases(mlflow_client, name),
        }


def register_and_gate(
    network_file: Path,
    run_id: str,
    name: str,
    metrics: dict[str, float],
    lineage: dict[str, str],
    profile: dict[str, Any],
    card: dict[str, Any],
    card_markdown: str,
    gate_set: Callable[[], GateSet],
    rules: GateRules,
    experiment: str,
    context: dict[str, str] | None = None,
    scoring: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Register a trained model (its network in ``network_file``, a ``.keras`` file) and pass it through the gate,
    all or nothing.

    ``scoring`` (the calibration and threshold chosen on the validation split) is carried inside the served
    model: the gate scores the version as it will answer, its floors at its own threshold.

    ``gate_set`` makes the gate's lesions when they are needed (a pinned cohort is read from disk),
    not when the training run was registered before.

    The new version is incomplete until its decision is recorded. If the gate fails (an error, an
    interruption) before any alias names it, it is deleted again: no half-registered model, no moved
    alias; if the tracking store cannot be reached even for that, it stays incomplete (never served
    nor promoted) until the next registry operation removes it, or a re-run of the same training
    run takes it over. A training run registered before (a re-run of a cached model) is not
    registered or gated again.

    Returns:
        ``{"version", "created", "decision", "reason", "aliases", "model_uri", ...}`` (the gate's record
        when the version is new).
    """
    registered = register_version(
        network_file, run_id, name, metrics, lineage, profile, card, card_markdown, incomplete=True, scoring=scoring
    )
    mlflow_client = registry_client()
    if not registered.created:
        tags = mlflow_client.get_model_version(name, registered.version).tags
        return {
            "version": registered.version,
            "created": False,
            "decision": tags.get("decision", ""),
            "reason": tags.get("decision_reason", ""),
            "aliases": aliases(mlflow_client, name),
            "model_uri": registered.model_uri,
        }
    try:
        result = gate(name, registered.version, gate_set(), rules, experiment, job="gate", context=context)
    except BaseException:
        discard_failed(mlflow_client, name, registered.version)
        raise
    return {**result, "created": True, "model_uri": registered.model_uri}
