"""Each baseline on a tiny seeded stream of real UCI digits: digits 0-4, then digits 5-9."""

import numpy as np
import pytest
import torch

from mycelium.config import ExpertTraining
from mycelium.continual import (
    NO_TAGS,
    TAGS,
    ElasticWeightConsolidation,
    ExperienceReplay,
    JointRetraining,
    NaiveFineTuning,
    Part,
    ReservoirBuffer,
    Scenario,
    run_learner,
)
from mycelium.data.sources import LABEL_COLUMN, load_uci_digits
from mycelium.errors import ConfigError

SEED = 3
NETWORK = ExpertTraining(architecture="mlp", config={"hidden": [64], "dropout": 0.0}, normalization="global",
                         epochs=15, lr=0.005)


@pytest.fixture(scope="module")
def split_digits() -> Scenario:
    """Two tasks of five UCI digits each: 300 training and 150 test rows per task."""
    digits = load_uci_digits()
    digits = digits.iloc[np.random.default_rng(SEED).permutation(len(digits))].reset_index(drop=True)
    parts = []
    for name, classes in (("0-4", (0, 1, 2, 3, 4)), ("5-9", (5, 6, 7, 8, 9))):
        rows = digits[digits[LABEL_COLUMN].isin(classes)].reset_index(drop=True)
        parts.append(Part(name, rows.iloc[:300].reset_index(drop=True), rows.iloc[300:450].reset_index(drop=True), classes))
    return Scenario("split_digits", "UCI digits in two tasks", "task", tuple(parts), 10)


@pytest.fixture(scope="module")
def naive_run(split_digits):
    return run_learner(NaiveFineTuning(split_digits, SEED, NETWORK))


@pytest.fixture(scope="module")
def replay_run(split_digits):
    return run_learner(ExperienceReplay(split_digits, SEED, NETWORK, buffer_size=100))


class TestNaiveFineTuning:
    def test_forgets_old_classes_without_tags(self, naive_run):
        matrix = naive_run.matrix(NO_TAGS)

        assert matrix.values[0, 0] > 0.9
        assert matrix.values[1, 0] < 0.2
        assert matrix.forgetting() > 0.7

    def test_learns_new_part(self, naive_run):
        assert naive_run.matrix(NO_TAGS).newest_accuracy() > 0.9

    def test_adds_no_parameters_after_first_part(self, naive_run):
        assert naive_run.costs[0].parameters_added == 64 * 64 + 64 + 64 * 10 + 10
        assert naive_run.costs[1].parameters_added == 0


class TestExperienceReplay:
    def test_forgets_less_than_naive(self, naive_run, replay_run):
        assert replay_run.matrix(NO_TAGS).forgetting() < naive_run.matrix(NO_TAGS).forgetting() - 0.3
        assert replay_run.matrix(NO_TAGS).values[1, 0] > 0.5

    def test_buffer_holds_first_part_while_second_trains(self, replay_run):
        assert replay_run.costs[0].details["buffer_rows_before"] == 0
        assert replay_run.costs[1].details["buffer_rows_before"] == 100
        assert replay_run.costs[1].stored_values == 100 * 64

    def test_time_budget_sets_training_length(self, split_digits):
        run = run_learner(ExperienceReplay(split_digits, SEED, NETWORK, buffer_size=100, time_budgets=[0.3, 0.3]))

        for cost in run.costs:
            # The budget is CPU time, checked after every step of a few milliseconds.
            assert 0.3 <= cost.cpu_seconds < 0.6
            assert cost.seconds >= cost.cpu_seconds * 0.9
            assert cost.details["time_budget_s"] == 0.3
        assert run.costs[0].epochs != NETWORK.epochs

    def test_rejects_budget_per_part_mismatch(self, split_digits):
        with pytest.raises(ConfigError, match="1 entries for 2 parts"):
            ExperienceReplay(split_digits, SEED, NETWORK, buffer_size=10, time_budgets=[1.0])


class TestReservoirBuffer:
    def test_keeps_capacity_and_samples_every_half(self):
        buffer = ReservoirBuffer(200, seed=0)
        features = torch.arange(2000.0).reshape(2000, 1)
        buffer.add(features[:1000], torch.zeros(1000, dtype=torch.long))
        buffer.add(features[1000:], torch.ones(1000, dtype=torch.long))

        assert len(buffer) == 200
        assert buffer.seen == 2000
        assert 0.35 < float(buffer.labels.float().mean()) < 0.65

    def test_same_seed_same_buffer(self):
        features = torch.arange(500.0).reshape(500, 1)
        labels = torch.zeros(500, dtype=torch.long)
        first, second = ReservoirBuffer(50, seed=1), ReservoirBuffer(50, seed=1)
        first.add(features, labels)
        second.add(features, labels)

        assert torch.equal(first.features, second.features)

    def test_empty_buffer_samples_nothing(self):
        assert ReservoirBuffer(5, seed=0).sample(torch.Generator(), 3) is None

    def test_rejects_zero_capacity(self):
        with pytest.raises(ConfigError, match="at least 1 row"):
            ReservoirBuffer(0, seed=0)


class TestElasticWeightConsolidation:
    def test_moves_weights_less_than_naive(self, split_digits, naive_run):
        ewc = ElasticWeightConsolidation(split_digits, SEED, NETWORK, ewc_lambda=5000.0, fisher_samples=200)
        naive = NaiveFineTuning(split_digits, SEED, NETWORK)
        ewc.learn(0)
        naive.learn(0)
        anchor = [p.detach().clone() for p in ewc.network.parameters()]
        assert all(torch.equal(a, b) for a, b in zip(anchor, naive.network.parameters()))

        ewc.learn(1)
        naive.learn(1)
        moved_ewc = sum(float((p.detach() - a).pow(2).sum()) for p, a in zip(ewc.network.parameters(), anchor))
        moved_naive = sum(float((p.detach() - a).pow(2).sum()) for p, a in zip(naive.network.parameters(), anchor))

        assert moved_ewc < 0.5 * moved_naive

    def test_keeps_old_task_better_than_naive_with_tags(self, split_digits, naive_run):
        run = run_learner(ElasticWeightConsolidation(split_digits, SEED, NETWORK, ewc_lambda=5000.0, fisher_samples=200))

        assert run.matrix(TAGS).values[1, 0] >= naive_run.matrix(TAGS).values[1, 0]
        assert run.matrix(TAGS).values[1, 0] > 0.9
        assert run.costs[1].stored_values == 2 * 2 * sum(p.numel() for p in NaiveFineTuning(split_digits, SEED, NETWORK).network.parameters())

    def test_fisher_is_non_negative_and_not_all_zero(self, split_digits):
        ewc = ElasticWeightConsolidation(split_digits, SEED, NETWORK, ewc_lambda=1.0, fisher_samples=50)
        ewc.learn(0)
        fisher, _ = ewc.anchors[0]

        assert all(float(value.min()) >= 0 for value in fisher.values())
        assert sum(float(value.sum()) for value in fisher.values()) > 0

    def test_rejects_negative_lambda(self, split_digits):
        with pytest.raises(ConfigError, match="ewc_lambda"):
            ElasticWeightConsolidation(split_digits, SEED, NETWORK, ewc_lambda=-1.0, fisher_samples=10)


class TestJointRetraining:
    def test_keeps_every_part(self, split_digits):
        run = run_learner(JointRetraining(split_digits, SEED, NETWORK))
        matrix = run.matrix(NO_TAGS)

        assert matrix.values[1, 0] > 0.85
        assert matrix.values[1, 1] > 0.85
        assert matrix.forgetting() < 0.1

    def test_second_part_trains_on_both(self, split_digits):
        run = run_learner(JointRetraining(split_digits, SEED, NETWORK))

        assert run.costs[1].stored_values == 600 * 64
        assert run.costs[1].seconds > 0


def test_run_ignores_earlier_global_draws(split_digits):
    # Both are built first, as the benchmark builds its learners, so the first run moves the global
    # generator that dropout in the second run draws from.
    dropout = NETWORK.model_copy(update={"config": {"hidden": [64], "dropout": 0.3}, "epochs": 3})
    learners = [ElasticWeightConsolidation(split_digits, SEED, dropout, ewc_lambda=10.0, fisher_samples=20)
                for _ in range(2)]
    first = run_learner(learners[0])
    second = run_learner(learners[1])

    assert np.array_equal(first.accuracies[NO_TAGS], second.accuracies[NO_TAGS])
