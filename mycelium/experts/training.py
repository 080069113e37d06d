"""Supervised training and evaluation loops shared by experts and patches."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from mycelium.errors import EmptyDataError
from mycelium.runtime import pick_device

logger = logging.getLogger(__name__)


# Below this size a CPU training step is dominated by thread start-up: on a 2-core machine one
# step of the digits CNN took 4 ms with one thread and 150 ms with two (measured here).
SINGLE_THREAD_MAX_PARAMETERS = 1_000_000


@contextmanager
def cpu_threads(device: torch.device, n_parameters: int) -> Iterator[None]:
    """Run a small model single-threaded on the CPU, and leave CUDA or large models alone."""
    if device.type != "cpu" or n_parameters > SINGLE_THREAD_MAX_PARAMETERS:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one training run."""

    epochs: int
    final_loss: float
    seconds: float
    samples: int
    device: str


def fit(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    parameters: Iterable[nn.Parameter] | None = None,
) -> TrainResult:
    """Train ``model`` with Adam and cross-entropy; only ``parameters`` change when given.

    Runs on CUDA when present. The model is moved back to the CPU afterwards so callers can
    save and hash it without caring where it was trained.
    """
    if len(features) == 0:
        raise EmptyDataError("No training samples: collect labelled data before training.")
    device = pick_device()
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    trainable = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    loss = torch.tensor(float("nan"))
    with cpu_threads(device, sum(p.numel() for p in model.parameters())):
        for _ in range(epochs):
            order = torch.randperm(len(features), generator=generator)
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(features[index].to(device)), labels[index].to(device))
                loss.backward()
                optimizer.step()
    model.to("cpu").eval()
    seconds = time.perf_counter() - started
    logger.debug("Trained %d epochs on %d samples in %.2f s", epochs, len(features), seconds)
    return TrainResult(epochs, float(loss.detach().cpu()), seconds, len(features), device.type)


@torch.no_grad()
def predict_logits(model: nn.Module, features: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Return the logits of ``model`` for every row of ``features``, in evaluation mode."""
    model.eval()
    parts = [model(features[start : start + batch_size]) for start in range(0, len(features), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the fraction of correct predictions; raises EmptyDataError on no samples."""
    if len(labels) == 0:
        raise EmptyDataError("Accuracy of zero samples is undefined: pass at least one labelled row.")
    return float((predictions.cpu() == labels.cpu()).float().mean())
