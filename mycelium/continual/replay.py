"""Experience replay: a fixed-size buffer of earlier rows, mixed into every training step."""

from __future__ import annotations

import numpy as np
import torch

from mycelium.config import ExpertTraining
from mycelium.continual.learner import NetworkLearner, PartCost, labels_of, train_network
from mycelium.continual.scenarios import Scenario
from mycelium.errors import ConfigError


class ReservoirBuffer:
    """At most ``capacity`` rows, a uniform sample of every row offered so far (reservoir sampling).

    Examples
    --------
    >>> buffer = ReservoirBuffer(3, seed=0)
    >>> buffer.add(torch.arange(10.0).reshape(10, 1), torch.arange(10))
    >>> len(buffer), buffer.seen
    (3, 10)
    """

    def __init__(self, capacity: int, *, seed: int):
        if capacity < 1:
            raise ConfigError(f"Replay buffer capacity must be at least 1 row, got {capacity}.")
        self.capacity = capacity
        self.seen = 0
        self.features: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Offer rows in order; row number n (counting from 0) replaces a random slot with probability capacity / (n + 1)."""
        if self.features is None:
            self.features = torch.empty((0, features.shape[1]), dtype=features.dtype)
            self.labels = torch.empty(0, dtype=labels.dtype)
        for row in range(len(labels)):
            if len(self) < self.capacity:
                self.features = torch.cat([self.features, features[row : row + 1]])
                self.labels = torch.cat([self.labels, labels[row : row + 1]])
            else:
                slot = int(self._rng.integers(0, self.seen + 1))
                if slot < self.capacity:
                    self.features[slot] = features[row]
                    self.labels[slot] = labels[row]
            self.seen += 1

    def sample(self, generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Draw ``n`` rows uniformly with replacement, or None while the buffer is empty."""
        if len(self) == 0:
            return None
        index = torch.randint(len(self), (n,), generator=generator)
        return self.features[index], self.labels[index]


class ExperienceReplay(NetworkLearner):
    """Train each part with every minibatch doubled by as many rows drawn from the buffer.

    The buffer is filled after each part, so while part t trains it contains rows of parts 0..t-1.
    ``time_budgets`` (CPU seconds per part) make each part train for that time instead of for
    ``settings.epochs`` epochs, so replay can be compared with another method at equal cost.
    """

    name = "replay"

    def __init__(self, scenario: Scenario, seed: int, settings: ExpertTraining, *, buffer_size: int,
                 time_budgets: list[float] | None = None):
        super().__init__(scenario, seed, settings)
        if time_budgets is not None and len(time_budgets) != len(scenario.parts):
            raise ConfigError(
                f"time_budgets has {len(time_budgets)} entries for {len(scenario.parts)} parts; give one per part."
            )
        self.buffer = ReservoirBuffer(buffer_size, seed=seed)
        self.time_budgets = time_budgets

    def learn(self, index: int) -> PartCost:
        part = self.scenario.parts[index]
        features, labels = self.inputs(part.train), labels_of(part.train)
        budget = None if self.time_budgets is None else self.time_budgets[index]
        run = train_network(self.network, features, labels, epochs=self.settings.epochs, lr=self.settings.lr,
                            batch_size=self.settings.batch_size, seed=self.seed + index, replay=self.buffer.sample,
                            time_budget_s=budget)
        started = len(self.buffer)
        self.buffer.add(features, labels)
        stored = len(self.buffer) * features.shape[1]
        details = {"buffer_rows": len(self.buffer), "buffer_rows_before": started, "time_budget_s": budget}
        parameters = self.n_parameters() if index == 0 else 0
        return PartCost(run.seconds, run.cpu_seconds, run.epochs, parameters, stored, details)
