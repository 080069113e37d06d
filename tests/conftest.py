"""Real digit data and a small trained digits subgraph, shared by the patch, subgraph and system
tests.

The session fixtures return shared objects: a test that changes one must deep-copy it first.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from mycelium.config import ExpertTraining, Patch
from mycelium.data.pairs import make_pairs
from mycelium.data.sources import load_mnist_resampled, load_uci_digits
from mycelium.experts.fitting import train_chained_expert, train_expert
from mycelium.hashing import sha256_state_dict
from mycelium.patches.training import PatchReport, train_patch
from mycelium.routing.chains import ChainPlan, UpstreamInput, plan_chain
from mycelium.subgraph import Subgraph

SEED = 7
TARGET_FPR = 0.05
# The OOD calibration then needs 4 / 0.05 = 80 holdout rows. The experts get 300 and patches 160.
MIN_TAIL_SAMPLES = 4
DIGITS_CNN = ExpertTraining(
    architecture="cnn",
    config={"image_shape": [1, 8, 8], "channels": [8, 16], "hidden": 32, "dropout": 0.1},
    normalization="global",
    epochs=10,
    lr=0.003,
)
DIGITS_PATCH = Patch(rank=4, alpha=8.0, epochs=15, lr=0.003, default_min_samples=10)
PAIRS_DOMAIN = "vision/digit-pairs"
PAIR_INPUTS = [UpstreamInput("a", "vision/digits", "logits"), UpstreamInput("b", "vision/digits", "logits")]
PAIR_MLP = ExpertTraining(architecture="mlp", config={"hidden": [32, 16], "dropout": 0.1},
                          normalization="per_feature", epochs=30, lr=0.003)


@dataclass(frozen=True)
class Splits:
    """Disjoint row sets of one shuffled table."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    test: pd.DataFrame


@dataclass(frozen=True)
class PatchRun:
    """A digits subgraph patched on MNIST rows, with the expert's sha256 around the training."""

    patched: Subgraph
    report: PatchReport
    sha256_before: str
    sha256_after: str


def _shuffled(frame: pd.DataFrame) -> pd.DataFrame:
    order = np.random.default_rng(SEED).permutation(len(frame))
    return frame.iloc[order].reset_index(drop=True)


@pytest.fixture(scope="session")
def uci_digits() -> Splits:
    """The 1,797 UCI digits: 900 training rows, 300 holdout rows and 597 test rows."""
    digits = _shuffled(load_uci_digits())
    return Splits(digits.iloc[:900], digits.iloc[900:1200], digits.iloc[1200:])


@pytest.fixture(scope="session")
def mnist_digits() -> Splits:
    """MNIST digits resampled to the UCI format: the same task in other handwriting.

    800 rows train a patch and 300 rows test it. The holdout is empty because
    train_patch draws its own.
    """
    digits = _shuffled(load_mnist_resampled())
    return Splits(digits.iloc[:800], digits.iloc[:0], digits.iloc[800:1100])


@pytest.fixture(scope="session")
def digits_cnn(uci_digits: Splits) -> Subgraph:
    """A small CNN expert trained for 10 epochs on the UCI digits (holdout accuracy about 0.96)."""
    return train_expert(
        "vision/digits",
        uci_digits.train,
        uci_digits.holdout,
        DIGITS_CNN,
        target_fpr=TARGET_FPR,
        seed=SEED,
        min_tail_samples=MIN_TAIL_SAMPLES,
    )


@pytest.fixture(scope="session")
def patched_digits_cnn(digits_cnn: Subgraph, mnist_digits: Splits) -> PatchRun:
    """``digits_cnn`` with one low-rank patch trained on the MNIST training rows."""
    before = sha256_state_dict(digits_cnn.expert.state_dict())
    patched, report = train_patch(
        digits_cnn,
        mnist_digits.train,
        DIGITS_PATCH,
        target_fpr=TARGET_FPR,
        seed=SEED,
        min_tail_samples=MIN_TAIL_SAMPLES,
    )
    after = sha256_state_dict(digits_cnn.expert.state_dict())
    return PatchRun(patched, report, before, after)


@pytest.fixture(scope="session")
def digit_pairs(uci_digits: Splits) -> Splits:
    """Balanced pairs of UCI digits drawn within each split: 2,000 train, 300 holdout, 400 test."""
    return Splits(
        make_pairs(uci_digits.train, 2000, seed=SEED),
        make_pairs(uci_digits.holdout, 300, seed=SEED + 1),
        make_pairs(uci_digits.test, 400, seed=SEED + 2),
    )


@pytest.fixture(scope="session")
def pair_plan() -> ChainPlan:
    """vision/digit-pairs reading the logits of vision/digits in slots a and b."""
    return plan_chain(PAIRS_DOMAIN, lambda name: PAIR_INPUTS if name == PAIRS_DOMAIN else [])


@pytest.fixture(scope="session")
def pair_expert(pair_plan: ChainPlan, digit_pairs: Splits, digits_cnn: Subgraph) -> Subgraph:
    """A small MLP over both slots' logits of ``digits_cnn``: equal digits or not."""
    return train_chained_expert(pair_plan, digit_pairs.train, digit_pairs.holdout, PAIR_MLP,
                                {"vision/digits": digits_cnn}.__getitem__, target_fpr=TARGET_FPR, seed=SEED,
                                min_tail_samples=MIN_TAIL_SAMPLES)
