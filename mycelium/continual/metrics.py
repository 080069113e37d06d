"""Continual-learning metrics of an accuracy matrix.

Row i of the matrix contains the test accuracy on every part after training on parts 0..i, so
entry (i, j) with j > i is the accuracy on a part not trained yet. The metrics follow
Lopez-Paz and Ranzato, "Gradient Episodic Memory for Continual Learning" (2017), for average
accuracy and backward transfer, and Chaudhry et al., "Riemannian Walk for Incremental
Learning" (2018), for forgetting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mycelium.errors import ConfigError


@dataclass(frozen=True)
class AccuracyMatrix:
    """Accuracies in [0, 1]: ``values[i, j]`` is the accuracy on part j after training on parts 0..i.

    Entries above the diagonal may be NaN, because a method may not predict a part it has not
    seen. Entries on and below the diagonal must be finite.

    Examples
    --------
    >>> matrix = AccuracyMatrix(np.array([[0.9, np.nan], [0.6, 0.8]]))
    >>> round(matrix.average_accuracy(), 3), round(matrix.forgetting(), 3), round(matrix.backward_transfer(), 3)
    (0.7, 0.3, -0.3)
    """

    values: np.ndarray

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] != values.shape[1] or values.shape[0] == 0:
            raise ConfigError(
                f"An accuracy matrix must be square with at least one part, got shape {values.shape}; "
                "pass one row per training part and one column per test part."
            )
        seen = values[np.tril_indices(values.shape[0])]
        if not np.all(np.isfinite(seen)) or seen.min() < 0 or seen.max() > 1:
            raise ConfigError(
                f"Accuracies on parts already trained must be finite and within [0, 1], got "
                f"{np.round(seen, 4).tolist()}; pass fractions, not percentages."
            )
        object.__setattr__(self, "values", values)

    @property
    def n_parts(self) -> int:
        return int(self.values.shape[0])

    def _last(self, after: int | None) -> int:
        last = self.n_parts - 1 if after is None else after
        if not 0 <= last < self.n_parts:
            raise ConfigError(f"after={after} is not a part index; use 0..{self.n_parts - 1} or None for the last.")
        return last

    def average_accuracy(self, after: int | None = None) -> float:
        """Mean accuracy over parts 0..after, after training on part ``after`` (default: the last)."""
        last = self._last(after)
        return float(self.values[last, : last + 1].mean())

    def newest_accuracy(self, after: int | None = None) -> float:
        """Accuracy on part ``after`` right after training on it (default: the last part)."""
        last = self._last(after)
        return float(self.values[last, last])

    def forgetting(self, after: int | None = None) -> float:
        """Mean drop on earlier parts: best accuracy each reached before part ``after``, minus its accuracy now.

        Zero when only one part has been trained. Negative when every earlier part improved.
        """
        last = self._last(after)
        if last == 0:
            return 0.0
        drops = [self.values[j:last, j].max() - self.values[last, j] for j in range(last)]
        return float(np.mean(drops))

    def backward_transfer(self, after: int | None = None) -> float:
        """Mean change on earlier parts since each was trained: negative values are forgetting."""
        last = self._last(after)
        if last == 0:
            return 0.0
        changes = [self.values[last, j] - self.values[j, j] for j in range(last)]
        return float(np.mean(changes))

    def summary(self) -> dict[str, float]:
        """Return the four metrics after the last part, as fractions."""
        return {
            "average_accuracy": self.average_accuracy(),
            "forgetting": self.forgetting(),
            "backward_transfer": self.backward_transfer(),
            "newest_accuracy": self.newest_accuracy(),
        }
