"""Cold storage: idle experts and their patches, quantized into verified bundles and versioned with DVC.

``quantize`` converts weights to INT8 or FP16 and back, ``bundle`` writes and verifies one
subgraph version, ``store`` versions bundles in a DVC repository with a remote, and
``smote`` keeps the mini-buffer and the synthetic-sample settings used on reactivation.
``sweep`` (LRU) and ``activity`` (activity-weighted) are the sweep policies that ``policy``
selects by name, and ``remembering`` restores a bundle through the validation gate.
"""

from mycelium.cold_storage.activity import ActivityPolicy, ActivityScore, activity_sweep
from mycelium.cold_storage.bundle import (
    BundleInfo,
    LoadedBundle,
    read_bundle,
    verify_bundle,
    write_bundle,
)
from mycelium.cold_storage.policy import SWEEP_POLICIES, select_evictions
from mycelium.cold_storage.quantize import (
    QuantizedState,
    dequantize_state_dict,
    fp32_size_bytes,
    quantize_state_dict,
)
from mycelium.cold_storage.smote import (
    SINGLE_CLASS_REASON,
    OversampleResult,
    balanced_buffer,
    oversample,
    smote_settings,
)
from mycelium.cold_storage.store import ColdStore, StoredVersion
from mycelium.cold_storage.sweep import Eviction, SweepCandidate, lru_sweep

__all__ = [
    "SINGLE_CLASS_REASON",
    "SWEEP_POLICIES",
    "ActivityPolicy",
    "ActivityScore",
    "BundleInfo",
    "ColdStore",
    "Eviction",
    "LoadedBundle",
    "OversampleResult",
    "QuantizedState",
    "StoredVersion",
    "SweepCandidate",
    "activity_sweep",
    "balanced_buffer",
    "dequantize_state_dict",
    "fp32_size_bytes",
    "lru_sweep",
    "oversample",
    "quantize_state_dict",
    "read_bundle",
    "select_evictions",
    "smote_settings",
    "verify_bundle",
    "write_bundle",
]
