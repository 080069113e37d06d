"""Naive fine-tuning: one network trained on each new part alone, the forgetting baseline."""

from __future__ import annotations

from mycelium.continual.learner import NetworkLearner, PartCost, labels_of, train_network


class NaiveFineTuning(NetworkLearner):
    """Keep training the same network on each part's rows, with nothing to protect older parts."""

    name = "naive"

    def learn(self, index: int) -> PartCost:
        part = self.scenario.parts[index]
        run = train_network(self.network, self.inputs(part.train), labels_of(part.train), epochs=self.settings.epochs,
                            lr=self.settings.lr, batch_size=self.settings.batch_size, seed=self.seed + index)
        if index == 0:
            return self.first_cost(run)
        return PartCost(run.seconds, run.cpu_seconds, run.epochs, 0)
