"""Decision policy: turn one domain's drift and OOD signals into one action, with the reason."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from mycelium.drift.base import DriftStatus
from mycelium.drift.feature_drift import FeatureDriftResult

logger = logging.getLogger(__name__)


class Action(str, enum.Enum):
    """Action taken on a domain after a window."""

    IGNORE = "ignore"
    PATCH = "patch"
    NEW_EXPERT = "new_expert"
    REACTIVATE = "reactivate"


@dataclass(frozen=True, kw_only=True)
class DomainSignals:
    """Everything the policy needs about one domain, or about the new-domain queue, for one window.

    Attributes
    ----------
    domain
        Domain name, or None for the queue of inputs that no domain accepts.
    state
        Lifecycle state of the domain ("hot", "cold", "remembering", ...). Ignored when domain is None.
    feature_drift
        Result of the feature-drift test of this window, if one ran.
    persistent_drift
        Whether feature drift persisted over enough consecutive windows (`DriftMonitor.drift_detected`).
    performance_drift
        Whether a streaming detector on labelled feedback raised an alarm.
    new_domain_samples
        Number of queued inputs that no domain accepts.
    new_domain_min_samples
        Queued inputs needed before a new expert is trained.
    labelled_samples
        Labelled recent samples of the domain, available to train a patch.
    min_patch_samples
        Labelled samples needed to train a patch.
    """

    domain: str | None
    state: str
    feature_drift: FeatureDriftResult | None = None
    persistent_drift: bool = False
    performance_drift: bool = False
    new_domain_samples: int = 0
    new_domain_min_samples: int
    labelled_samples: int = 0
    min_patch_samples: int

    def __post_init__(self) -> None:
        for name in ("new_domain_samples", "new_domain_min_samples", "labelled_samples", "min_patch_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}.")


@dataclass(frozen=True)
class Decision:
    """One action for one domain, with a plain-sentence reason and the numbers behind it."""

    action: Action
    domain: str | None
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Convert to plain JSON types."""
        return {"action": self.action.value, "domain": self.domain, "reason": self.reason, "evidence": self.evidence}


def decide(signals: DomainSignals) -> Decision:
    """Choose one action for a domain (or for the new-domain queue) and log why.

    The first matching rule wins:

    1. Queued inputs that no domain accepts become a new expert once there are enough of them.
    2. A cold domain is reactivated.
    3. A domain in another state than hot is left alone.
    4. Persistent feature drift or performance drift is patched when there are enough labelled samples.
    5. Anything else is ignored.
    """
    decision = _decide(signals)
    logger.info("Decision for domain %s: %s. %s", decision.domain, decision.action.value, decision.reason)
    return decision


def _decide(signals: DomainSignals) -> Decision:
    evidence = _evidence(signals)
    domain = signals.domain

    if domain is None:
        queued, needed = signals.new_domain_samples, signals.new_domain_min_samples
        if queued >= needed:
            return Decision(
                Action.NEW_EXPERT, None,
                f"{queued} inputs that no domain accepts are queued, at least the minimum of {needed}, "
                "so a new expert is trained on them.",
                evidence,
            )
        return Decision(
            Action.IGNORE, None,
            f"{queued} inputs that no domain accepts are queued; waiting for {needed - queued} more samples "
            f"before training a new expert (minimum {needed}).",
            evidence,
        )

    if signals.state == "cold":
        return Decision(
            Action.REACTIVATE, domain,
            f"Domain {domain!r} is cold, so its expert is reactivated from cold storage before it serves.",
            evidence,
        )
    if signals.state != "hot":
        return Decision(
            Action.IGNORE, domain,
            f"Domain {domain!r} is in state {signals.state!r}; drift actions wait until it is hot.",
            evidence,
        )

    if signals.persistent_drift or signals.performance_drift:
        cause = _drift_cause(signals)
        labelled, needed = signals.labelled_samples, signals.min_patch_samples
        if labelled >= needed:
            return Decision(
                Action.PATCH, domain,
                f"{cause}, and {labelled} labelled samples are available (minimum {needed}), so a patch is trained.",
                evidence,
            )
        return Decision(
            Action.IGNORE, domain,
            f"{cause}, but only {labelled} labelled samples are available, {needed - labelled} short of "
            f"the {needed} needed to train a patch.",
            evidence,
        )

    return Decision(Action.IGNORE, domain, _no_drift_reason(signals.feature_drift), evidence)


def _drift_cause(signals: DomainSignals) -> str:
    causes = []
    result = signals.feature_drift
    if signals.persistent_drift and result is not None and result.status is DriftStatus.DRIFT:
        causes.append(
            f"feature drift persisted over consecutive windows (score {result.score:.3f} > threshold "
            f"{result.threshold:.3f} on feature {result.score_feature!r})"
        )
    elif signals.persistent_drift:
        causes.append("feature drift persisted over consecutive windows")
    if signals.performance_drift:
        causes.append("performance drift was detected on labelled feedback")
    text = " and ".join(causes)
    return text[0].upper() + text[1:]


def _no_drift_reason(result: FeatureDriftResult | None) -> str:
    if result is None:
        return "No drift: no feature-drift result for this window and no performance drift."
    if result.status is DriftStatus.INSUFFICIENT_DATA:
        return (
            f"No drift decision: the window has {result.n_rows} non-empty rows, too few to test, "
            "and there is no performance drift."
        )
    score = f"score {result.score:.3f}"
    threshold = f"threshold {result.threshold:.3f} on feature {result.score_feature!r}"
    if result.status is DriftStatus.DRIFT:
        return f"Feature drift in this window ({score} > {threshold}) is not yet persistent; waiting for more drifting windows."
    if result.score > result.threshold:
        p_value = result.p_value_adjusted[result.score_feature]
        return (
            f"No drift: {score} > {threshold}, but its corrected p-value {p_value:.3g} is not significant, "
            "and there is no performance drift."
        )
    return f"No drift: {score} <= {threshold}, and no performance drift."


def _evidence(signals: DomainSignals) -> dict[str, Any]:
    result = signals.feature_drift
    feature_drift = None
    if result is not None:
        summary = result.to_dict()
        feature_drift = {
            key: summary[key]
            for key in ("status", "score", "threshold", "score_feature", "drifted_features", "top_features", "n_rows")
        }
    return {
        "state": signals.state,
        "feature_drift": feature_drift,
        "persistent_drift": signals.persistent_drift,
        "performance_drift": signals.performance_drift,
        "new_domain_samples": signals.new_domain_samples,
        "new_domain_min_samples": signals.new_domain_min_samples,
        "labelled_samples": signals.labelled_samples,
        "min_patch_samples": signals.min_patch_samples,
    }
