"""The contract of a continual learner, and the single network that the baselines train.

A learner receives the parts of a scenario one at a time through ``learn`` and predicts test rows
through ``predict`` under a *view*: ``"tags"`` when the caller gives the part's tag (for a
task scenario, the task), ``"no_tags"`` when it does not. Mycelium adds views of its own.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from mycelium.config import ExpertTraining
from mycelium.continual.scenarios import Part, Scenario
from mycelium.data.sources import LABEL_COLUMN
from mycelium.errors import ConfigError
from mycelium.experts import Expert, InputSchema, build_expert
from mycelium.experts.training import cpu_threads, predict_logits
from mycelium.runtime import pick_device

TAGS = "tags"
NO_TAGS = "no_tags"


@dataclass(frozen=True)
class PartCost:
    """What learning one part cost: wall time, CPU time, epochs run and parameters added.

    ``cpu_seconds`` is the process's CPU time (``time.process_time``), which other jobs on a
    shared machine change far less than the wall time. ``parameters_added`` counts trainable parameters that exist because of this part (the
    whole first network for part 0). ``stored_values`` counts numbers kept besides the
    parameters (a replay buffer, EWC's Fisher information and anchors). ``details`` contains a
    method's own timings, for example Mycelium's routing calibration.
    """

    seconds: float
    cpu_seconds: float
    epochs: float
    parameters_added: int
    stored_values: int = 0
    details: dict[str, Any] = field(default_factory=dict)


class ContinualLearner(ABC):
    """A method that learns the parts of one scenario in order."""

    name: ClassVar[str]

    def __init__(self, scenario: Scenario, seed: int):
        self.scenario = scenario
        self.seed = seed

    @property
    def views(self) -> tuple[str, ...]:
        """Views this learner predicts under; a task scenario gets a tagged and an untagged one."""
        return (TAGS, NO_TAGS) if self.scenario.kind == "task" else (NO_TAGS,)

    @abstractmethod
    def learn(self, index: int) -> PartCost:
        """Learn part ``index`` of the scenario; parts arrive in order, each once."""

    @abstractmethod
    def predict(self, frame: pd.DataFrame, *, view: str, part: Part) -> np.ndarray:
        """Predict the global class of every row of ``frame``, which contains test rows of ``part``.

        Only a tagged view may use ``part`` (its tag and classes).
        """


def labels_of(frame: pd.DataFrame) -> torch.Tensor:
    return torch.as_tensor(frame[LABEL_COLUMN].to_numpy(), dtype=torch.long)


class NetworkLearner(ContinualLearner):
    """A baseline: one network over every class of the scenario, with the expert's architecture.

    The input normalisation is learnt from the first part and then kept, as a deployed model
    keeps its preprocessing.
    """

    def __init__(self, scenario: Scenario, seed: int, settings: ExpertTraining):
        super().__init__(scenario, seed)
        self.settings = settings
        first = scenario.parts[0].train
        config = dict(settings.config)
        self.schema = InputSchema.fit(
            scenario.columns,
            first[scenario.columns].to_numpy(dtype=np.float64),
            per_feature=settings.normalization == "per_feature",
            image_shape=tuple(config["image_shape"]) if "image_shape" in config else None,
        )
        self.network = self.new_network()

    def new_network(self) -> Expert:
        """Build an untrained network, seeded so that every baseline starts from the same weights."""
        config = dict(self.settings.config) | {"in_features": len(self.scenario.columns),
                                                "n_classes": self.scenario.n_classes}
        torch.manual_seed(self.seed)
        return build_expert(self.settings.architecture, config)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    def inputs(self, frame: pd.DataFrame) -> torch.Tensor:
        return self.schema.transform(frame[self.scenario.columns].to_numpy(dtype=np.float64))

    def predict(self, frame: pd.DataFrame, *, view: str, part: Part) -> np.ndarray:
        logits = predict_logits(self.network, self.inputs(frame))
        if view == TAGS:
            # Task-incremental evaluation: the tag restricts the prediction to the task's classes.
            mask = torch.full((logits.shape[1],), float("-inf"))
            mask[list(part.classes)] = 0.0
            logits = logits + mask
        elif view != NO_TAGS:
            raise ConfigError(f"Unknown view {view!r} for {self.name}; use {TAGS!r} or {NO_TAGS!r}.")
        return logits.argmax(dim=1).numpy()

    def first_cost(self, run: TrainingRun, stored_values: int = 0) -> PartCost:
        return PartCost(run.seconds, run.cpu_seconds, run.epochs, self.n_parameters(), stored_values)


@dataclass(frozen=True)
class TrainingRun:
    """Epochs completed (fractional when a time budget stopped training), wall time and CPU time."""

    epochs: float
    seconds: float
    cpu_seconds: float


ReplaySampler = Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor] | None]
Penalty = Callable[[nn.Module], torch.Tensor]


def train_network(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    penalty: Penalty | None = None,
    replay: ReplaySampler | None = None,
    time_budget_s: float | None = None,
    max_epochs: int = 200,
) -> TrainingRun:
    """Train with Adam and cross-entropy, plus an optional penalty and replayed rows in every step.

    ``replay`` returns rows to append to each minibatch (or None while it has none). With
    ``time_budget_s`` training runs until the process has used that much CPU time, for at most
    ``max_epochs`` epochs, instead of for ``epochs`` epochs. CPU time, because the wall time of
    a step varies with other jobs on a shared machine.
    """
    if len(features) == 0:
        raise ConfigError("No training rows: a part must have at least one labelled row.")
    device = pick_device()
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    steps_per_epoch = -(-len(features) // batch_size)
    limit = max_epochs if time_budget_s is not None else epochs
    started, cpu_started = time.perf_counter(), time.process_time()
    steps = 0
    with cpu_threads(device, sum(p.numel() for p in model.parameters())):
        for _ in range(limit):
            order = torch.randperm(len(features), generator=generator)
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                x, y = features[index], labels[index]
                replayed = replay(generator, len(index)) if replay is not None else None
                if replayed is not None:
                    x, y = torch.cat([x, replayed[0]]), torch.cat([y, replayed[1]])
                optimizer.zero_grad()
                loss = loss_fn(model(x.to(device)), y.to(device))
                if penalty is not None:
                    loss = loss + penalty(model)
                loss.backward()
                optimizer.step()
                steps += 1
                if time_budget_s is not None and time.process_time() - cpu_started >= time_budget_s:
                    break
            else:
                continue
            break
    model.to("cpu").eval()
    return TrainingRun(steps / steps_per_epoch, time.perf_counter() - started, time.process_time() - cpu_started)
