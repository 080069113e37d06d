"""Detection: feature drift, performance drift and new-domain (OOD) scores, and the policy that acts on them."""

from mycelium.drift.base import DriftDetector, DriftStatus
from mycelium.drift.feature_drift import DriftMonitor, FeatureDriftResult, FeatureDriftTest
from mycelium.drift.ood import MahalanobisOOD, energy_score, max_softmax
from mycelium.drift.page_hinkley import PageHinkley
from mycelium.drift.policy import Action, Decision, DomainSignals, decide

__all__ = [
    "Action",
    "Decision",
    "DomainSignals",
    "DriftDetector",
    "DriftMonitor",
    "DriftStatus",
    "FeatureDriftResult",
    "FeatureDriftTest",
    "MahalanobisOOD",
    "PageHinkley",
    "decide",
    "energy_score",
    "max_softmax",
]
