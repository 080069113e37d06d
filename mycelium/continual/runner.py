"""Run a learner through a scenario and record its accuracy matrix under each view, and its costs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from mycelium.continual.learner import ContinualLearner, PartCost
from mycelium.continual.metrics import AccuracyMatrix
from mycelium.data.sources import LABEL_COLUMN

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnerRun:
    """One learner on one scenario and seed: per view, accuracies on every part after every part."""

    learner: str
    scenario: str
    seed: int
    costs: tuple[PartCost, ...]
    accuracies: dict[str, np.ndarray]

    def matrix(self, view: str) -> AccuracyMatrix:
        return AccuracyMatrix(self.accuracies[view])


def run_learner(learner: ContinualLearner) -> LearnerRun:
    """Train ``learner`` on each part in order; after each part, test it on every part's test rows.

    Parts not trained yet are tested too, so the plots show them, but no metric reads them.
    """
    parts = learner.scenario.parts
    accuracies = {view: np.full((len(parts), len(parts)), np.nan) for view in learner.views}
    costs = []
    for index in range(len(parts)):
        # Dropout draws from torch's global generator. Seeding it here makes a learner's run the same
        # whatever ran before it in the process, such as a replay run of varying length.
        torch.manual_seed(learner.seed + index)
        cost = learner.learn(index)
        costs.append(cost)
        for view, matrix in accuracies.items():
            for column, part in enumerate(parts):
                predicted = learner.predict(part.test, view=view, part=part)
                matrix[index, column] = float(np.mean(predicted == part.test[LABEL_COLUMN].to_numpy()))
        logger.info("%s on %s, part %d (%s): %.1f s, accuracy on it %s", learner.name, learner.scenario.name, index,
                    parts[index].name, cost.seconds,
                    ", ".join(f"{view} {matrix[index, index]:.3f}" for view, matrix in accuracies.items()))
    return LearnerRun(learner.name, learner.scenario.name, learner.seed, tuple(costs), accuracies)
