"""Elastic weight consolidation (Kirkpatrick et al., 2017): a quadratic penalty that keeps the
weights that mattered for earlier parts near their values after those parts."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from mycelium.config import ExpertTraining
from mycelium.continual.learner import NetworkLearner, PartCost, labels_of, train_network
from mycelium.continual.scenarios import Scenario
from mycelium.errors import ConfigError

# Rows per vectorised call of the per-row gradients; bounds memory at rows x parameters.
_FISHER_CHUNK = 100


def diagonal_fisher(model: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return the empirical Fisher information's diagonal: the mean over rows of each squared
    per-row gradient of the log-likelihood of the true label, in evaluation mode."""
    model.eval()
    parameters = {name: value.detach() for name, value in model.named_parameters()}

    def row_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, params, (x.unsqueeze(0),)), y.unsqueeze(0))

    per_row = vmap(grad(row_loss), in_dims=(None, 0, 0))
    total = {name: torch.zeros_like(value) for name, value in parameters.items()}
    for start in range(0, len(labels), _FISHER_CHUNK):
        grads = per_row(parameters, features[start : start + _FISHER_CHUNK], labels[start : start + _FISHER_CHUNK])
        for name, value in grads.items():
            total[name] += value.pow(2).sum(dim=0)
    return {name: value / len(labels) for name, value in total.items()}


class ElasticWeightConsolidation(NetworkLearner):
    """Naive fine-tuning plus (lambda / 2) * sum over earlier parts of F * (theta - theta_part) ** 2.

    After each part the diagonal Fisher information is estimated on ``fisher_samples`` of its
    training rows and stored with a copy of the weights (the anchor).
    """

    name = "ewc"

    def __init__(self, scenario: Scenario, seed: int, settings: ExpertTraining, *, ewc_lambda: float,
                 fisher_samples: int):
        super().__init__(scenario, seed, settings)
        if ewc_lambda < 0 or fisher_samples < 1:
            raise ConfigError(
                f"EWC needs ewc_lambda >= 0 and fisher_samples >= 1, got {ewc_lambda} and {fisher_samples}."
            )
        self.ewc_lambda = ewc_lambda
        self.fisher_samples = fisher_samples
        self.anchors: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        total = torch.zeros(())
        for fisher, anchor in self.anchors:
            for name, value in model.named_parameters():
                total = total + (fisher[name] * (value - anchor[name]).pow(2)).sum()
        return 0.5 * self.ewc_lambda * total

    def learn(self, index: int) -> PartCost:
        part = self.scenario.parts[index]
        features, labels = self.inputs(part.train), labels_of(part.train)
        run = train_network(self.network, features, labels, epochs=self.settings.epochs, lr=self.settings.lr,
                            batch_size=self.settings.batch_size, seed=self.seed + index,
                            penalty=self.penalty if self.anchors else None)
        started, cpu_started = time.perf_counter(), time.process_time()
        rows = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed + index))
        rows = rows[: self.fisher_samples]
        fisher = diagonal_fisher(self.network, features[rows], labels[rows])
        anchor = {name: value.detach().clone() for name, value in self.network.named_parameters()}
        self.anchors.append((fisher, anchor))
        fisher_seconds, fisher_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        stored = 2 * self.n_parameters() * len(self.anchors)
        parameters = self.n_parameters() if index == 0 else 0
        return PartCost(run.seconds + fisher_seconds, run.cpu_seconds + fisher_cpu_seconds, run.epochs, parameters, stored,
                        {"fisher_seconds": fisher_seconds})
