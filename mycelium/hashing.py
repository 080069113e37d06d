"""SHA-256 digests of files, byte strings and PyTorch state dicts."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch

_CHUNK_BYTES = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Return one hex SHA-256 over every tensor's name, dtype, shape and raw bytes.

    Names are visited in sorted order, so two dicts with the same tensors give the same
    digest whatever their insertion order. Two tensors that are equal in value but differ in
    dtype or shape give different digests. Use it to prove that frozen weights are
    bit-identical before and after training.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        header = f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0"
        digest.update(header.encode("utf-8"))
        # A uint8 view gives the raw bytes for every dtype, bfloat16 included, which numpy
        # cannot represent.
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()
