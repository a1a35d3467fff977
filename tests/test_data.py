"""Tests for prunedrop.data: every spec kind, the splits, the shuffled order, and every user error."""

from __future__ import annotations

import gzip
import struct
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from prunedrop import data as data_module
from prunedrop.data import DataBundle, check_labels, load_data, parse_spec, read_idx
from prunedrop.errors import PrunedropError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzipped when the name ends in .gz."""
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def make_idx_dir(
    directory: Path, *, n_train: int = 20, n_test: int = 6, gz: bool = False, test_prefix: str = "t10k"
) -> Path:
    """Four tiny IDX files: images are i*10 % 256 everywhere, labels i % 3."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), (test_prefix, n_test)):
        images = (
            np.arange(n, dtype=np.int64)[:, None, None] * 10 % 256 * np.ones((1, 4, 5), np.int64)
        ).astype("u1")
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) % 3).astype("u1"))
    return directory


def message(excinfo: pytest.ExceptionInfo[PrunedropError]) -> str:
    text = excinfo.value.format_message()
    assert "\n" not in text, "user errors are one line"
    return text


@pytest.fixture
def no_system_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hide Debian's dataset folders so that tests do not depend on what this machine has installed."""
    for name in ("mnist", "fashion-mnist"):  # the one dict that prunedrop.data re-exports from prunedrop.data.named
        monkeypatch.setitem(data_module.SYSTEM_DATA_DIRS, name, tmp_path / "nowhere" / name)


# --- parse_spec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("digits", ("digits", "")),
        ("  Fashion-MNIST ", ("fashion-mnist", "")),
        ("mnist", ("mnist", "")),
        ("idx:/data/x", ("idx", "/data/x")),
        ("npz:C:/data/a b.npz", ("npz", "C:/data/a b.npz")),
        ("python:pkg.mod:make.data", ("python", "pkg.mod:make.data")),
        ("PYTHON:mod:fn", ("python", "mod:fn")),
    ],
)
def test_parse_spec_valid(spec: str, expected: tuple[str, str]) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "the data spec is empty"),
        ("cifar", "unknown data spec 'cifar'; use one of: digits, mnist, fashion-mnist, idx:DIR"),
        ("fashion_mnist", "did you mean 'fashion-mnist'?"),
        ("data.npz", "did you mean 'npz:data.npz'?"),
        ("mnist:/x", "'mnist' takes no argument; give the folder of its files with --data-dir"),
        ("npz:", "lacks its argument; write it as npz:FILE"),
        ("idx", "'idx' lacks its argument; write it as idx:DIR"),
        ("python:mod", "not of the form python:MODULE:FUNCTION"),
        ("python:mod:fn:x", "not of the form python:MODULE:FUNCTION"),
        ("python:1mod:fn", "not of the form python:MODULE:FUNCTION"),
        ("npz:a\x00b", "NUL character"),
        ("a\nb", "unknown data spec 'a\\nb'"),
    ],
)
def test_parse_spec_malformed(spec: str, fragment: str) -> None:
    with pytest.raises(PrunedropError) as excinfo:
        parse_spec(spec)
    assert fragment in message(excinfo)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.builds(
            lambda kind, arg: f"{kind}:{arg}",
            st.sampled_from(["digits", "mnist", "fashion-mnist", "idx", "npz", "python", "Python", "x"]),
            st.text(),
        ),
    )
)
def test_parse_spec_fuzz(spec: str) -> None:
    try:
        kind, arg = parse_spec(spec)
    except PrunedropError as e:
        assert "\n" not in e.format_message()
    else:
        assert kind in ("digits", "mnist", "fashion-mnist", "idx", "npz", "python")
        assert isinstance(arg, str)


# --- digits -------------------------------------------------------------------------------------------


def test_digits_shapes_and_splits() -> None:
    bundle = load_data("digits")
    assert bundle.name == "digits"
    assert bundle.input_shape == (1, 8, 8)
    assert bundle.num_classes == 10
    # 1797 samples: a stratified 20% (360) is test; 10% of the remaining 1437 is validation.
    assert (len(bundle.test), len(bundle.val), bundle.num_train) == (360, 144, 1293)
    x = bundle.train.tensors[0]
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert bundle.train.tensors[1].dtype == torch.int64
    counts = torch.bincount(bundle.test.tensors[1], minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # stratified: about 36 per class


def test_digits_test_split_fixed_but_val_split_seeded() -> None:
    a, b = load_data("digits", seed=0), load_data("digits", seed=1)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert not torch.equal(a.val.tensors[0], b.val.tensors[0])
    assert torch.equal(a.val.tensors[0], load_data("digits", seed=0).val.tensors[0])


# --- IDX ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir(tmp_path: Path, gz: bool) -> None:
    directory = make_idx_dir(tmp_path / "d", n_train=20, n_test=6, gz=gz)
    bundle = load_data(f"idx:{directory}", val_fraction=0.25)
    assert bundle.input_shape == (1, 4, 5)
    assert (bundle.num_train, len(bundle.val), len(bundle.test)) == (15, 5, 6)
    assert bundle.num_classes == 3
    x, y = bundle.test.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x[:, 0, 0, 0], torch.arange(6) * 10 / 255.0)
    assert y.tolist() == [0, 1, 2, 0, 1, 2]


def test_idx_dir_test_prefix_and_optional_test(tmp_path: Path) -> None:
    bundle = load_data(f"idx:{make_idx_dir(tmp_path / 'a', test_prefix='test')}")
    assert len(bundle.test) == 6
    only_train = make_idx_dir(tmp_path / "b")
    for f in only_train.glob("t10k-*"):
        f.unlink()
    assert load_data(f"idx:{only_train}").test is None


def test_read_idx_int16_big_endian(tmp_path: Path) -> None:
    array = np.array([[1, -2, 300]], dtype="i2")
    assert read_idx(write_idx(tmp_path / "a-idx2", array)).tolist() == [[1, -2, 300]]


def _corrupt(tmp_path: Path, raw: bytes, name: str = "train-images-idx3-ubyte") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"\x00\x00", "only 2 bytes"),
        (b"PK\x03\x04rest", "bad magic number 0x504b0304"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01x", "unknown data type code 0x07"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
        (
            b"\x00\x00\x08\x01\x00\x00\x00\x05abc",
            "truncated: shape (5,) needs 5 bytes of data, the file has 3",
        ),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01ab", "longer than its header says"),
    ],
)
def test_read_idx_corrupt(tmp_path: Path, raw: bytes, fragment: str) -> None:
    path = _corrupt(tmp_path, raw)
    with pytest.raises(PrunedropError) as excinfo:
        read_idx(path)
    text = message(excinfo)
    assert str(path) in text and fragment in text and "download it again" in text


def test_read_idx_bad_gzip_names_file(tmp_path: Path) -> None:
    path = _corrupt(tmp_path, b"not gzip at all", "train-labels-idx1-ubyte.gz")
    with pytest.raises(PrunedropError, match="is corrupt: cannot be read") as excinfo:
        read_idx(path)
    assert str(path) in message(excinfo)
    good = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")
    truncated = _corrupt(tmp_path, good[: len(good) // 2], "t.gz")
    with pytest.raises(PrunedropError, match="is corrupt"):
        read_idx(truncated)


def test_idx_errors(tmp_path: Path) -> None:
    with pytest.raises(PrunedropError, match=r"IDX folder '.*missing' does not exist$"):
        load_data(f"idx:{tmp_path / 'missing'}")
    (tmp_path / "a-file").write_bytes(b"")
    for spec in (f"idx:{tmp_path / 'a-file'}", f"imagefolder:{tmp_path / 'a-file'}"):
        with pytest.raises(PrunedropError, match="a-file' is a file, not a folder$"):
            load_data(spec)
    with pytest.raises(PrunedropError, match="a-file' is a file, not a folder$"):
        load_data("fashion-mnist", data_dir=tmp_path / "a-file")
    with pytest.raises(PrunedropError, match="missing/below' does not exist$"):
        load_data(f"imagefolder:{tmp_path / 'missing' / 'below'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrunedropError) as excinfo:
        load_data(f"idx:{tmp_path / 'empty'}")
    assert "has no train images, train labels IDX file" in message(excinfo)

    mismatch = make_idx_dir(tmp_path / "m")
    write_idx(mismatch / "train-labels-idx1-ubyte", np.zeros(7, dtype="u1"))
    with pytest.raises(PrunedropError) as excinfo:
        load_data(f"idx:{mismatch}")
    assert "train-images-idx3-ubyte has 20 images but train-labels-idx1-ubyte has 7 labels" in message(
        excinfo
    )

    negative = make_idx_dir(tmp_path / "n")
    write_idx(negative / "train-labels-idx1-ubyte", np.full(20, -1, dtype="i1"))
    with pytest.raises(PrunedropError, match="include -1; labels must be class indices"):
        load_data(f"idx:{negative}")

    half_test = make_idx_dir(tmp_path / "h")
    (half_test / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(PrunedropError, match="has t10k-images-idx3-ubyte but not its images/labels partner"):
        load_data(f"idx:{half_test}")


# --- mnist / fashion-mnist ----------------------------------------------------------------------------


@pytest.mark.usefixtures("no_system_data")
@pytest.mark.parametrize("layout", [".", "fashion-mnist", "FashionMNIST/raw"])
def test_fashion_mnist_from_data_dir(tmp_path: Path, layout: str) -> None:
    make_idx_dir(tmp_path / "root" / layout, gz=True)
    bundle = load_data("fashion-mnist", data_dir=tmp_path / "root")
    assert bundle.name == "fashion-mnist"
    assert (bundle.num_train, len(bundle.val), len(bundle.test)) == (18, 2, 6)


@pytest.mark.usefixtures("no_system_data")
def test_named_dataset_absent(tmp_path: Path) -> None:
    partial = make_idx_dir(tmp_path / "root")
    (partial / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(PrunedropError) as excinfo:
        load_data("fashion-mnist", data_dir=partial)
    text = message(excinfo)
    assert f"looked in: {partial} (no test labels)" in text
    assert f"{partial / 'fashion-mnist'} (no such folder)" in text
    assert str(data_module.SYSTEM_DATA_DIRS["fashion-mnist"]) in text
    assert "apt-get install dataset-fashion-mnist" in text and "--data-dir DIR" in text

    with pytest.raises(PrunedropError) as excinfo:
        load_data("mnist")
    assert "mnist IDX files not found" in message(excinfo) and "download the four MNIST IDX files" in message(
        excinfo
    )

    with pytest.raises(PrunedropError, match="data directory .* does not exist"):
        load_data("mnist", data_dir=tmp_path / "typo")


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist() -> None:
    bundle = load_data("fashion-mnist", val_fraction=0.1)
    assert (bundle.num_train, len(bundle.val), len(bundle.test)) == (54000, 6000, 10000)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert bundle.example_batch(4).shape == (4, 1, 28, 28)


# --- npz ----------------------------------------------------------------------------------------------


def test_npz_with_all_splits_keeps_values_unscaled(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=np.full((10, 3), 255, dtype=np.uint8),
        y_train=np.arange(10) % 4,
        x_val=rng.normal(size=(4, 3)),
        y_val=np.array([0.0, 1.0, 2.0, 3.0]),
        x_test=rng.normal(size=(5, 3)),
        y_test=np.zeros(5, dtype=np.int32),
    )
    bundle = load_data(f"npz:{path}")
    assert (bundle.num_train, len(bundle.val), len(bundle.test)) == (10, 4, 5)
    assert bundle.input_shape == (3,) and bundle.num_classes == 4
    x, y = bundle.train.tensors
    assert x.dtype == torch.float32 and float(x.max()) == 255.0
    assert y.dtype == torch.int64 and bundle.val.tensors[1].dtype == torch.int64


def test_npz_train_only_gets_val_split(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((100, 2, 2)), y_train=np.zeros(100, dtype=np.int64))
    bundle = load_data(f"npz:{path}", val_fraction=0.1)
    assert (bundle.num_train, len(bundle.val), bundle.test) == (90, 10, None)


def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = (
        tmp_path / f"bad{len(list(tmp_path.iterdir()))}.npz"
    )  # a new file per case: specs are built up front
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_class_labels_as_a_column_are_one_label_per_sample(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((6, 2)), y_train=(np.arange(6) % 3).reshape(6, 1))
    bundle = load_data(f"npz:{path}", val_fraction=0.5)
    labels = torch.cat([bundle.train.tensors[1], bundle.val.tensors[1]])
    assert labels.shape == (6,) and sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2] and bundle.num_classes == 3


def test_npz_arrays_under_the_names_they_usually_have(tmp_path: Path) -> None:
    """scikit-learn's X_train/Y_test, x_valid, and one x/y pair were refused ("has no array 'x_train'")."""
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    y = np.arange(40) % 2
    b = load_data(_npz(tmp_path, X_train=x[:30], Y_train=y[:30], X_valid=x[30:35], y_VALID=y[30:35],
                       X_test=x[35:], Y_test=y[35:]))
    assert (b.num_train, b.num_val, len(b.test)) == (30, 5, 5)
    torch.testing.assert_close(b.val.tensors[0], torch.from_numpy(x[30:35]))
    pair = load_data(_npz(tmp_path, x=x, y=y), val_fraction=0.25)
    assert (pair.num_train, pair.num_val, pair.test) == (30, 10, None)
    with pytest.raises(PrunedropError, match="2 arrays for x_train"):
        load_data(_npz(tmp_path, x_train=x, X_train=x, y_train=y))
    with pytest.raises(PrunedropError, match="has no array 'x_train'.*one x/y pair"):
        load_data(_npz(tmp_path, features=x, labels=y))


def test_npz_labels_that_are_names(tmp_path: Path) -> None:
    from prunedrop.recipes import Recipe

    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    spec = _npz(tmp_path, x_train=x, y_train=np.array(["dog", "cat", "owl", "cat", "dog"]),
                x_val=x[:2], y_val=np.array([b"owl", b"cat"]))  # bytes too, as h5py and old pickles write them
    data = load_data(spec, recipe=Recipe(class_names=["sorted"]))
    assert data.train.tensors[1].tolist() == [1, 0, 2, 0, 1] and data.val.tensors[1].tolist() == [2, 0]
    assert data.class_names == ["cat", "dog", "owl"]
    # digits saved as text are class indices, not names
    digits = load_data(_npz(tmp_path, x_train=x, y_train=np.array(["2", "0", "1", "0", "2"]), x_val=x[:1],
                            y_val=np.array([b"1"])))
    assert digits.train.tensors[1].tolist() == [2, 0, 1, 0, 2] and digits.class_names is None
    mixed = _npz(tmp_path, x_train=x, y_train=np.array(["dog", "cat", "owl", "cat", "dog"]), x_val=x[:2],
                 y_val=np.array([0, 1]))
    with pytest.raises(PrunedropError, match="names as labels in some splits"):
        load_data(mixed, recipe=Recipe(class_names=["sorted"]))


def test_npz_errors(tmp_path: Path) -> None:
    x, y = np.zeros((4, 2)), np.zeros(4, dtype=np.int64)
    cases = [
        (f"npz:{tmp_path / 'nope.npz'}", "does not exist"),
        (_npz(tmp_path, X_tr=x, y_train=y), "has no array 'x_train' (it has: X_tr, y_train)"),
        (_npz(tmp_path, x_train=x, y_train=np.array(["cat", "dog", "cat", "owl"])),
         "labels in y_train are names ('cat', 'dog', 'owl', ...), not class indices; say how the model numbers them: "
         "--class-names sorted"),
        (_npz(tmp_path, x_train=x, y_train=y, x_val=x), "has no array 'y_val'"),
        (_npz(tmp_path, x_train=x, y_train=y[:3]), "x_train has 4 samples but y_train has 3 labels"),
        (_npz(tmp_path, x_train=x, y_train=np.array([0, 0.5, 1, 1])), "non-integer values"),
        (_npz(tmp_path, x_train=x, y_train=np.array([0, np.nan, 1, np.nan])), "labels in y_train contain 2 NaN or inf"),
        (_npz(tmp_path, x_train=x, y_train=np.full((4, 2), 0.5)), "labels must be shaped (N,), or (N, ...) with a "
         "class per position"),
        (_npz(tmp_path, x_train=np.zeros((0, 2)), y_train=np.zeros(0)), "is empty"),
        (_npz(tmp_path, x_train=np.array([[0.0, np.nan]] * 4), y_train=y), "contain 4 NaN or inf values"),
        (_npz(tmp_path, x_train=np.array([[0.0, np.inf]] * 4), y_train=y), "NaN or inf"),
        (_npz(tmp_path, x_train=x, y_train=np.array([0, 1, -3, 0])), "include -3"),
        (_npz(tmp_path, x_train=x, y_train=y, x_val=np.zeros((2, 3)), y_val=y[:2]), "differ in sample shape"),
    ]
    for spec, fragment in cases:
        with pytest.raises(PrunedropError) as excinfo:
            load_data(spec)
        assert fragment in message(excinfo), spec

    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip file")
    with pytest.raises(PrunedropError, match="cannot read npz file"):
        load_data(f"npz:{corrupt}")
    single = tmp_path / "single.npy"
    np.save(single, x)
    with pytest.raises(PrunedropError, match="holds a single array, not an npz archive"):
        load_data(f"npz:{single}")


def test_npz_float_targets_with_loss_mse_are_regression_targets(tmp_path: Path) -> None:
    from prunedrop.recipes import Recipe

    rng = np.random.default_rng(0)
    x, y1, y2 = rng.normal(size=(20, 3)), rng.normal(size=20), rng.normal(size=(20, 2))
    bundle = load_data(_npz(tmp_path, x_train=x, y_train=y1), recipe=Recipe(loss="mse"))
    targets = torch.cat([bundle.train.tensors[1], bundle.val.tensors[1]])
    assert targets.dtype == torch.float32 and bundle.num_classes is None
    assert sorted(targets.tolist()) == pytest.approx(sorted(y1.tolist()), rel=1e-6)  # not rounded to classes
    bundle = load_data(_npz(tmp_path, x_train=x, y_train=y2, x_val=x[:4], y_val=y2[:4]), recipe=Recipe(loss="mse"))
    assert bundle.train.tensors[1].shape == (20, 2) and bundle.val.tensors[1].dtype == torch.float32
    # whole-number float targets stay real numbers under mse (with cross_entropy they are class indices)
    whole = load_data(_npz(tmp_path, x_train=x, y_train=np.arange(20.0)), recipe=Recipe(loss="mse"))
    assert whole.train.tensors[1].dtype == torch.float32
    ints = load_data(_npz(tmp_path, x_train=x, y_train=np.arange(20)), recipe=Recipe(loss="mse"))
    assert ints.train.tensors[1].dtype == torch.int64  # refused later by check_loss_targets, naming the loss


def test_npz_regression_target_errors(tmp_path: Path) -> None:
    from prunedrop.recipes import Recipe

    x = np.zeros((4, 2))
    mse = Recipe(loss="mse")
    cases = [
        (_npz(tmp_path, x_train=x, y_train=np.float64(1.0)), mse, "(regression targets: (N,), or (N, ...) shaped as "
         "the model's output per sample)"),
        (_npz(tmp_path, x_train=x, y_train=np.array([0.0, np.nan, 1.0, 2.0])), mse, "NaN or inf"),
        (_npz(tmp_path, x_train=x, y_train=np.array([0.5, 1.0, 1.0, 2.0])), None, "pass --loss mse"),
        (_npz(tmp_path, x_train=x, y_train=np.full((4, 2), 0.5)), None, "for regression targets pass --loss mse"),
    ]
    for spec, recipe, fragment in cases:
        with pytest.raises(PrunedropError) as excinfo:
            load_data(spec, recipe=recipe)
        assert fragment in message(excinfo), spec


# --- python: ------------------------------------------------------------------------------------------

_USER_MODULE = """
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from prunedrop.data import DataBundle

def _ds(n, offset=0):
    return TensorDataset(torch.arange(offset, offset + n * 6, dtype=torch.float32).reshape(n, 2, 3),
                         torch.arange(n) % 5)

class Pairs(Dataset):
    def __init__(self, n):
        self.n = n
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        return torch.full((3,), float(i)), i % 2

def pair():
    return _ds(10), _ds(4)

def triple():
    return _ds(10), _ds(4), _ds(3)

def as_dict():
    return {"train": Pairs(20), "test": Pairs(5)}

def loaders():
    return DataLoader(_ds(10), batch_size=4), DataLoader(_ds(4), batch_size=4)

def bundle():
    return DataBundle("mine", _ds(10), _ds(4), None, (2, 3), 7)

def loader_without_val():
    return {"train": DataLoader(_ds(10))}

def wrong_type():
    return [1, 2, 3, 4]

def wrong_item():
    return _ds(10), "val"

def unknown_key():
    return {"train": _ds(10), "valid": _ds(2)}

def not_pairs():
    return TensorDataset(torch.zeros(4, 2)), _ds(2)

class _Dicts(torch.utils.data.Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, i):
        return {"pixel_values": torch.zeros(2), "labels": 0}

def dict_items():
    return _Dicts(), _ds(2)

def weighted_triples():
    return TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.ones(4)), _ds(2)

def float_labels():
    return TensorDataset(torch.zeros(4, 2), torch.full((4,), 0.5)), _ds(2)

def whole_float_labels():
    return TensorDataset(torch.zeros(4, 2, 3), torch.tensor([0.0, 2.0, 1.0, 2.0])), _ds(2)

class OneHot(Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, i):
        return torch.zeros(2), torch.nn.functional.one_hot(torch.tensor(i % 3), 3).float()

def one_hot():
    return OneHot(), OneHot()

def nan_inputs():
    return TensorDataset(torch.full((4, 2), float("nan")), torch.zeros(4, dtype=torch.long)), _ds(2)

def empty_val():
    return _ds(4), _ds(0)

not_callable = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "userdata_for_tests.py").write_text(textwrap.dedent(_USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userdata_for_tests"
    sys.modules.pop("userdata_for_tests", None)


def test_python_tuple_dict_and_bundle(user_module: str) -> None:
    b = load_data(f"python:{user_module}:pair")
    assert (b.num_train, len(b.val), b.test) == (10, 4, None)
    assert b.input_shape == (2, 3) and b.num_classes == 5
    assert len(load_data(f"python:{user_module}:triple").test) == 3

    d = load_data(f"python:{user_module}:as_dict", val_fraction=0.25)
    assert (d.num_train, len(d.val), len(d.test)) == (15, 5, 5)
    assert d.input_shape == (3,) and d.num_classes is None
    assert d.example_batch(3, split="test").tolist() == [[0.0] * 3, [1.0] * 3, [2.0] * 3]

    given = load_data(f"python:{user_module}:bundle")
    assert (given.name, given.input_shape, given.num_classes, given.num_train) == ("mine", (2, 3), 7, 10)


def test_python_loaders_are_returned_as_is(user_module: str) -> None:
    b = load_data(f"python:{user_module}:loaders")
    assert b.num_train == 10 and b.input_shape == (2, 3)
    assert b.loader("train", 128) is b.train
    training = b.loader("train", 128, shuffle=True)  # the same batches, but for any of one sample (BatchNorm)
    assert training.loader is b.train and len(training) == len(b.train) and training.batch_size == b.train.batch_size
    assert [len(y) for _, y in training] == [len(y) for _, y in b.train]
    assert b.example_batch(6, split="train").shape == (6, 2, 3)
    with pytest.raises(PrunedropError, match="cannot be applied to the DataLoader"):
        load_data(f"python:{user_module}:loaders", train_limit=2)


@pytest.mark.parametrize(
    ("function", "fragment"),
    [
        ("loader_without_val", "cannot be split off a DataLoader"),
        ("wrong_type", "returned a list of length 4; return a DataBundle, a dict"),
        ("wrong_item", "returned a str as val; use a torch Dataset or DataLoader"),
        ("unknown_key", "returned unknown keys ['valid']"),
        ("not_pairs", "is a tuple of length 1; it must be an (input, label) pair"),
        ("dict_items", "is a dict; it must be an (input, label) pair (its keys: pixel_values, labels): return "
                       "(item['pixel_values'], item['labels'])"),
        ("weighted_triples", "is a tuple of length 3; it must be an (input, label) pair; the entries after the "
                             "label (sample weights"),
        ("float_labels", "are torch.float32; labels must be integer class indices (for real-valued regression "
                         "targets pass --loss mse"),
        ("one_hot", "are one-hot vectors over 3 classes; labels must be class indices: give labels.argmax(-1)"),
        ("nan_inputs", "contain 8 NaN or inf values"),
        ("empty_val", "the val data of 'python:userdata_for_tests:empty_val' is empty"),
        ("not_callable", "is not callable (it is a int object)"),
        ("missing", "has no attribute 'missing'"),
    ],
)
def test_python_errors(user_module: str, function: str, fragment: str) -> None:
    with pytest.raises(PrunedropError) as excinfo:
        load_data(f"python:{user_module}:{function}")
    assert fragment in message(excinfo)


def test_python_whole_number_float_labels_are_class_indices(user_module: str) -> None:
    """As the npz reader reads them: a TensorDataset of labels 0.0, 2.0, ... was refused ("are torch.float32")."""
    b = load_data(f"python:{user_module}:whole_float_labels")
    assert b.train.tensors[1].dtype == torch.int64 and b.train.tensors[1].tolist() == [0, 2, 1, 2]
    assert b.num_classes == 3


# --- splits, limits, loaders, labels ------------------------------------------------------------------


def _tensor_npz(tmp_path: Path, n: int) -> str:
    path = tmp_path / f"n{n}.npz"
    np.savez(path, x_train=np.arange(n, dtype=np.float32)[:, None], y_train=np.arange(n) % 3)
    return f"npz:{path}"


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"), [(100, 0.1, 10), (100, 0.25, 25), (7, 0.1, 1), (2, 0.5, 1)]
)
def test_val_split_sizes(tmp_path: Path, n: int, fraction: float, n_val: int) -> None:
    bundle = load_data(_tensor_npz(tmp_path, n), val_fraction=fraction)
    assert (len(bundle.val), bundle.num_train) == (n_val, n - n_val)
    together = torch.cat([bundle.train.tensors[0], bundle.val.tensors[0]]).flatten().sort().values
    assert together.tolist() == list(range(n))  # a partition: nothing lost, nothing shared


def test_split_and_limit_errors(tmp_path: Path) -> None:
    with pytest.raises(PrunedropError, match="has 1 samples, too few to split off a validation set"):
        load_data(_tensor_npz(tmp_path, 1))
    for fraction in (1, -0.1, 1.5, "0.1", True):
        with pytest.raises(PrunedropError, match=r"validation fraction \(val_fraction\) must be in \[0, 1\)"):
            load_data("digits", val_fraction=fraction)  # type: ignore[arg-type]
    # the recipe's range, [0, 1): 0 is refused where a validation split must be split off (digits has none) ...
    with pytest.raises(PrunedropError, match="has no validation split and val_fraction is 0: .* set val_fraction above"):
        load_data("digits", val_fraction=0)
    # ... and unused where the data brings its own
    own = tmp_path / "own_val.npz"
    np.savez(own, x_train=np.zeros((10, 2), np.float32), y_train=np.arange(10) % 3,
             x_val=np.zeros((4, 2), np.float32), y_val=np.arange(4) % 3)
    assert len(load_data(f"npz:{own}", val_fraction=0).val) == 4
    for limit in (0, -3, 2.5):
        with pytest.raises(PrunedropError, match="training limit must be a positive integer"):
            load_data("digits", train_limit=limit)  # type: ignore[arg-type]


def test_train_limit_keeps_first_after_split(tmp_path: Path) -> None:
    spec = _tensor_npz(tmp_path, 50)
    full, limited = load_data(spec, seed=3), load_data(spec, seed=3, train_limit=7)
    assert torch.equal(limited.train.tensors[0], full.train.tensors[0][:7])
    assert torch.equal(limited.val.tensors[0], full.val.tensors[0])
    assert load_data(spec, train_limit=10_000).num_train == 45


def _order(bundle: DataBundle, **kwargs: int) -> list[float]:
    return [v for x, _ in bundle.loader("train", 4, shuffle=True, **kwargs) for v in x.flatten().tolist()]


def test_shuffled_order_depends_only_on_seed_and_epoch(tmp_path: Path) -> None:
    spec = _tensor_npz(tmp_path, 40)
    bundle = load_data(spec)
    first = _order(bundle, seed=0, epoch=0)
    torch.manual_seed(1234)  # global RNG state must not matter
    assert _order(load_data(spec), seed=0, epoch=0) == first  # a fresh process/bundle: same order
    assert _order(bundle, seed=0, epoch=1) != first
    assert _order(bundle, seed=1, epoch=0) != first
    assert sorted(first) == sorted(_order(bundle, seed=0, epoch=1))
    plain = [v for x, _ in bundle.loader("train", 4) for v in x.flatten().tolist()]
    assert plain == bundle.train.tensors[0].flatten().tolist()
    assert len(bundle.loader("train", 8, drop_last=True)) == 36 // 8


def test_loader_and_example_batch_errors(tmp_path: Path) -> None:
    bundle = load_data(_tensor_npz(tmp_path, 20))
    with pytest.raises(PrunedropError, match="has no test split"):
        bundle.loader("test", 4)
    with pytest.raises(PrunedropError, match="unknown data split 'valid'"):
        bundle.example_batch(split="valid")
    with pytest.raises(PrunedropError, match="batch size must be a positive integer"):
        bundle.loader("train", 0)
    assert bundle.example_batch(100).shape == (2, 1)  # the split has only 2 samples


def test_a_one_logit_binary_classifier_is_named() -> None:
    # A model with one output and 0/1 labels was told "labels go up to 1 but the model has 1 outputs".
    from prunedrop.data import binary_labels

    x = torch.zeros(4, 2)
    bundle = DataBundle("b", TensorDataset(x, torch.tensor([0, 1, 1, 0])), None, None, (2,), 2)
    assert binary_labels(bundle)
    with pytest.raises(PrunedropError) as excinfo:
        check_labels(bundle, 1)
    assert message(excinfo).startswith("the model has one output and the labels are 0 and 1: a one-logit binary "
                                       "classifier; set loss: binary_cross_entropy")
    check_labels(bundle, 2)
    check_labels(bundle, 1, "binary_cross_entropy")
    with pytest.raises(PrunedropError, match="needs a model with one output"):
        check_labels(bundle, 2, "binary_cross_entropy")
    three = DataBundle("c", TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 2])), None, None, (2,), 3)
    assert not binary_labels(three)
    with pytest.raises(PrunedropError, match="needs labels 0 and 1, the data's go up to 2"):
        check_labels(three, 1, "binary_cross_entropy")
    assert not binary_labels(DataBundle("r", TensorDataset(x, torch.tensor([0.0, 1.0, 1.0, 0.0])), None, None,
                                        (2,), None))


def test_check_labels() -> None:
    x = torch.zeros(6, 2)
    bundle = DataBundle(
        "t",
        TensorDataset(x, torch.tensor([0, 1, 2, 3, 4, 11])),
        TensorDataset(x, torch.zeros(6)),
        None,
        (2,),
        12,
    )
    check_labels(bundle, 12)
    with pytest.raises(PrunedropError) as excinfo:
        check_labels(bundle, 10)
    assert message(excinfo) == (
        "labels go up to 11 but the model has 10 outputs; check that --data matches the model"
    )
    # labels counted from 1 (1 … 10 for 10 classes, as R, MATLAB and many CSV files write them)
    from_one = DataBundle("o", TensorDataset(x, torch.tensor([1, 2, 3, 10, 4, 5])), None, None, (2,), None)
    with pytest.raises(PrunedropError, match="they run from 1 to 10: class indices count from 0, so subtract 1"):
        check_labels(from_one, 10)
    loader = DataLoader([(torch.zeros(2), 4), (torch.zeros(2), 1)], shuffle=True)
    loader_bundle = DataBundle("l", loader, TensorDataset(x, torch.zeros(6)), None, (2,), None)
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    check_labels(loader_bundle, 5)
    assert torch.equal(
        torch.rand(1), expected_next
    )  # peeking at a shuffling loader leaves the global RNG alone
