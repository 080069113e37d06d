"""Detection: feature drift, performance drift and new-domain (OOD) scores, and the policy that acts on them."""

from mycelium.drift.adwin import ADWIN
from mycelium.drift.autoencoder import AutoencoderOOD
from mycelium.drift.base import DriftDetector, DriftStatus, WindowResult, WindowTest
from mycelium.drift.combined_ood import CombinedOOD, domain_check_inputs, fit_domain_check, ood_from_tensors
from mycelium.drift.feature_drift import DriftMonitor, FeatureDriftResult, FeatureDriftTest
from mycelium.drift.gradient_subspace import GradientSubspaceOOD
from mycelium.drift.mmd import MMDDriftResult, MMDDriftTest
from mycelium.drift.ood import MahalanobisOOD, energy_score, max_softmax
from mycelium.drift.page_hinkley import PageHinkley
from mycelium.drift.performance import PerformanceMonitor
from mycelium.drift.policy import Action, Decision, DomainSignals, decide
from mycelium.drift.row_statistics import RowStatisticsOOD, row_statistics

__all__ = [
    "ADWIN",
    "Action",
    "AutoencoderOOD",
    "CombinedOOD",
    "Decision",
    "DomainSignals",
    "DriftDetector",
    "DriftMonitor",
    "DriftStatus",
    "FeatureDriftResult",
    "FeatureDriftTest",
    "GradientSubspaceOOD",
    "MMDDriftResult",
    "MMDDriftTest",
    "MahalanobisOOD",
    "PageHinkley",
    "PerformanceMonitor",
    "RowStatisticsOOD",
    "WindowResult",
    "WindowTest",
    "decide",
    "domain_check_inputs",
    "energy_score",
    "fit_domain_check",
    "max_softmax",
    "ood_from_tensors",
    "row_statistics",
]
