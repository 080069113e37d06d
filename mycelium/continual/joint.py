"""Joint retraining: a fresh network trained on every part seen so far, the upper bound and the cost to beat."""

from __future__ import annotations

import pandas as pd

from mycelium.continual.learner import NetworkLearner, PartCost, labels_of, train_network


class JointRetraining(NetworkLearner):
    """Retrain from the initial weights on all training rows of parts 0..index, for the same epochs."""

    name = "joint"

    def learn(self, index: int) -> PartCost:
        seen = pd.concat([part.train for part in self.scenario.parts[: index + 1]], ignore_index=True)
        self.network = self.new_network()
        run = train_network(self.network, self.inputs(seen), labels_of(seen), epochs=self.settings.epochs,
                            lr=self.settings.lr, batch_size=self.settings.batch_size, seed=self.seed + index)
        # The old training rows are kept for the next retraining.
        stored = len(seen) * len(self.scenario.columns)
        if index == 0:
            return self.first_cost(run, stored)
        return PartCost(run.seconds, run.cpu_seconds, run.epochs, 0, stored)
