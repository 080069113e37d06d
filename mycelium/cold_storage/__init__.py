"""Cold storage: idle experts and their patches, quantized into verified bundles and versioned with DVC.

``quantize`` converts weights to INT8 or FP16 and back, ``bundle`` writes and verifies one
subgraph version, ``store`` versions bundles in a DVC repository with a remote, and
``smote`` keeps the mini-buffer and the synthetic-sample settings used on reactivation.
"""

from mycelium.cold_storage.bundle import (
    BundleInfo,
    LoadedBundle,
    read_bundle,
    verify_bundle,
    write_bundle,
)
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

__all__ = [
    "SINGLE_CLASS_REASON",
    "BundleInfo",
    "ColdStore",
    "LoadedBundle",
    "OversampleResult",
    "QuantizedState",
    "StoredVersion",
    "balanced_buffer",
    "dequantize_state_dict",
    "fp32_size_bytes",
    "oversample",
    "quantize_state_dict",
    "read_bundle",
    "smote_settings",
    "verify_bundle",
    "write_bundle",
]
