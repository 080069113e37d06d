"""Continual learning measured: scenarios split into parts, baseline learners and the metrics of
the accuracy matrix, to compare Mycelium's experts and patches with the standard methods."""

from mycelium.continual.ewc import ElasticWeightConsolidation
from mycelium.continual.joint import JointRetraining
from mycelium.continual.learner import NO_TAGS, TAGS, ContinualLearner, NetworkLearner, PartCost
from mycelium.continual.metrics import AccuracyMatrix
from mycelium.continual.mycelium_learner import NO_TAGS_BATCHES, MyceliumLearner
from mycelium.continual.naive import NaiveFineTuning
from mycelium.continual.replay import ExperienceReplay, ReservoirBuffer
from mycelium.continual.runner import LearnerRun, run_learner
from mycelium.continual.scenarios import Part, Scenario, digits_shift, rainfall_drift, split_mnist

__all__ = [
    "NO_TAGS",
    "NO_TAGS_BATCHES",
    "TAGS",
    "AccuracyMatrix",
    "ContinualLearner",
    "ElasticWeightConsolidation",
    "ExperienceReplay",
    "JointRetraining",
    "LearnerRun",
    "MyceliumLearner",
    "NaiveFineTuning",
    "NetworkLearner",
    "Part",
    "PartCost",
    "ReservoirBuffer",
    "Scenario",
    "digits_shift",
    "rainfall_drift",
    "run_learner",
    "split_mnist",
]
