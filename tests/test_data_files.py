"""Tests for prunedrop.data.files through ``load_data``: imagefolder:, csv: and hf: specs on files the tests
write (tiny PNGs, CSVs, parquet and save_to_disk folders), and every bad-input answer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prunedrop.data import check_labels, load_data, parse_spec
from prunedrop.errors import PrunedropError
from prunedrop.recipes import Recipe

Image = pytest.importorskip("PIL.Image")


def message(excinfo: pytest.ExceptionInfo[PrunedropError]) -> str:
    text = excinfo.value.format_message()
    assert "\n" not in text, "user errors are one line"
    return text


def png(path: Path, value: int | tuple[int, int, int], size: tuple[int, int] = (5, 4), mode: str = "L") -> Path:
    """A constant image of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def image_tree(root: Path, classes: dict[str, int], *, per_class: int = 3, size: tuple[int, int] = (5, 4)) -> Path:
    """One folder per class; image i of a class has the pixel value ``classes[name] + i``."""
    for name, base in classes.items():
        for i in range(per_class):
            png(root / name / f"{i}.png", base + i, size)
    return root


# --- imagefolder: ---------------------------------------------------------------------------------------


def test_imagefolder_with_splits(tmp_path: Path) -> None:
    classes = {"dog": 100, "cat": 10, "eel": 200}  # created out of order: labels follow the sorted names
    image_tree(tmp_path / "train", classes, per_class=4)
    image_tree(tmp_path / "val", classes, per_class=2)
    image_tree(tmp_path / "test", {"cat": 10, "eel": 200}, per_class=1)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    bundle = load_data(f"imagefolder:{tmp_path}")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 6, 2)
    assert bundle.input_shape == (1, 4, 5) and bundle.num_classes == 3
    assert bundle.train.classes == ["cat", "dog", "eel"]
    x, y = bundle.train[0]
    assert y == 0 and x.dtype == torch.float32 and x.shape == (1, 4, 5)
    torch.testing.assert_close(x, torch.full((1, 4, 5), 10 / 255))
    assert [bundle.test[i][1] for i in range(2)] == [0, 2]  # test labels use the training classes' indices
    xs, ys = next(iter(bundle.loader("val", 6)))
    assert xs.shape == (6, 1, 4, 5) and ys.tolist() == [0, 0, 1, 1, 2, 2]
    torch.testing.assert_close(xs[3, 0, 0, 0], torch.tensor(101 / 255))


def test_imagefolder_without_splits_splits_off_validation(tmp_path: Path) -> None:
    image_tree(tmp_path, {"a": 0, "b": 50}, per_class=10)
    bundle = load_data(f"imagefolder:{tmp_path}", val_fraction=0.2, seed=3)
    assert (len(bundle.train), len(bundle.val), bundle.test) == (16, 4, None)
    assert bundle.num_classes == 2
    labels = sorted(int(bundle.train[i][1]) for i in range(16)) + sorted(int(bundle.val[i][1]) for i in range(4))
    assert sorted(labels) == [0] * 10 + [1] * 10
    check_labels(bundle, 2)
    with pytest.raises(PrunedropError):
        check_labels(bundle, 1)


def test_image_size_channels_and_imagenet_normalisation(tmp_path: Path) -> None:
    png(tmp_path / "a" / "0.png", (255, 0, 128), size=(7, 3), mode="RGB")
    png(tmp_path / "b" / "0.png", (0, 255, 0), size=(2, 9), mode="RGB")
    recipe = Recipe(image_size=[4, 6], normalize="imagenet")
    bundle = load_data(f"imagefolder:{tmp_path}", recipe=recipe, val_fraction=0.5)
    assert bundle.input_shape == (3, 4, 6)
    x = bundle.train.dataset[0][0]  # class a: the first image of the unsplit folder
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    torch.testing.assert_close(x[:, 2, 3], expected)
    square = load_data(f"imagefolder:{tmp_path}", recipe=Recipe(image_size=5, image_channels=1), val_fraction=0.5)
    assert square.input_shape == (1, 5, 5)


def test_channels_follow_the_images_and_custom_normalisation(tmp_path: Path) -> None:
    image_tree(tmp_path, {"a": 10, "b": 20}, per_class=2)
    assert load_data(f"imagefolder:{tmp_path}", val_fraction=0.5).input_shape == (1, 4, 5)
    png(tmp_path / "b" / "colour.png", (1, 2, 3), mode="RGB")  # one colour image makes the whole set RGB
    bundle = load_data(f"imagefolder:{tmp_path}", val_fraction=0.5,
                       recipe=Recipe(normalize="custom", normalize_mean=[0.5], normalize_std=[0.25, 0.5, 1.0]))
    assert bundle.input_shape == (3, 4, 5)
    x = bundle.train.dataset[0][0]  # a/0.png, grey 10 on all three channels
    torch.testing.assert_close(x[:, 0, 0], (10 / 255 - 0.5) / torch.tensor([0.25, 0.5, 1.0]))
    with pytest.raises(PrunedropError) as e:
        load_data(f"imagefolder:{tmp_path}", recipe=Recipe(normalize="imagenet", image_channels=1))
    assert "image_channels: 3" in message(e)
    with pytest.raises(PrunedropError) as e:
        load_data(f"imagefolder:{tmp_path}",
                  recipe=Recipe(normalize="custom", normalize_mean=[0.1, 0.2], normalize_std=[1.0]))
    assert "'normalize_mean' has 2 values" in message(e)


def test_sixteen_bit_images_keep_their_range(tmp_path: Path) -> None:
    for name, value in (("a", 1000), ("b", 60000)):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((3, 4), value, np.uint16)).save(tmp_path / name / "0.png")
    bundle = load_data(f"imagefolder:{tmp_path}", val_fraction=0.5)
    dataset = bundle.train.dataset
    assert bundle.input_shape == (1, 3, 4)
    torch.testing.assert_close(dataset[0][0], torch.full((1, 3, 4), 1000 / 65535))
    rgb = load_data(f"imagefolder:{tmp_path}", val_fraction=0.5, recipe=Recipe(image_channels=3, image_size=[2]))
    torch.testing.assert_close(rgb.train.dataset[1][0], torch.full((3, 2, 2), 60000 / 65535))


def test_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    png(tmp_path / "a" / "small.png", 1, size=(4, 4))
    png(tmp_path / "b" / "big.png", 1, size=(8, 6))
    with pytest.raises(PrunedropError) as e:
        load_data(f"imagefolder:{tmp_path}", val_fraction=0.5)
    text = message(e)
    assert "small.png is 4x4" in text and "big.png is 8x6" in text and "image_size" in text
    assert load_data(f"imagefolder:{tmp_path}", val_fraction=0.5, recipe=Recipe(image_size=[3])).input_shape == (
        1, 3, 3)


def test_absurd_sizes_are_refused(tmp_path: Path) -> None:
    png(tmp_path / "a" / "wide.png", 0, size=(5000, 1))
    png(tmp_path / "b" / "wide.png", 0, size=(5000, 1))
    with pytest.raises(PrunedropError) as e:
        load_data(f"imagefolder:{tmp_path}", val_fraction=0.5)
    assert "5000x1" in message(e) and "4096" in message(e)
    with pytest.raises(PrunedropError) as e:
        Recipe(image_size=[5000, 10])
    assert "'image_size'" in message(e)


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda d: (d / "a").mkdir() or (d / "b").mkdir(), ["holds no images", "/a'"]),
        (lambda d: (d / "stray.png").write_bytes(b""), ["no class folders"]),
        (lambda d: png(d / "a" / "0.png", 1) and png(d / "b" / "0.png", 1) and (d / "b" / "bad.png").write_bytes(
            b"not a png"), ["cannot read image", "bad.png"]),
        (lambda d: image_tree(d / "train", {"a": 0}) and image_tree(d / "val", {"zebra": 0}),
         ["zebra", "training class"]),
        (lambda d: image_tree(d / "val", {"a": 0}), ["val/ but no train/"]),
        (lambda d: image_tree(d / "train", {"a": 0}) and image_tree(d, {"extra": 0}), ["also extra/"]),
        (lambda d: image_tree(d / "train", {"a": 0}) and (d / "val" / "a").mkdir(parents=True), ["holds no images"]),
    ],
    ids=["empty-class", "no-classes", "corrupt", "unknown-val-class", "val-without-train", "train-beside-class",
         "empty-val-class"],
)
def test_bad_image_folders(tmp_path: Path, make, fragments: list[str]) -> None:
    make(tmp_path)
    with pytest.raises(PrunedropError) as e:
        load_data(f"imagefolder:{tmp_path}", val_fraction=0.5)
    text = message(e)
    for fragment in fragments:
        assert fragment in text


def test_image_damaged_after_listing_is_named_on_access(tmp_path: Path) -> None:
    image_tree(tmp_path, {"a": 0, "b": 9}, per_class=2)
    good = (tmp_path / "b" / "1.png").read_bytes()
    (tmp_path / "b" / "1.png").write_bytes(good[: len(good) // 2])  # a truncated PNG: its header still reads
    # With size and channels given nothing is decoded up front; the damaged file is named when it is read.
    bundle = load_data(f"imagefolder:{tmp_path}", val_fraction=0.5, recipe=Recipe(image_size=[4, 5], image_channels=1))
    dataset = bundle.train.dataset
    with pytest.raises(PrunedropError) as e:
        dataset[3]
    assert "1.png" in message(e) and "cannot read image" in message(e)


def test_missing_folder_and_spec_syntax(tmp_path: Path) -> None:
    with pytest.raises(PrunedropError) as e:
        load_data(f"imagefolder:{tmp_path / 'nope'}")
    assert "does not exist" in message(e)
    assert parse_spec("imagefolder:some/dir") == ("imagefolder", "some/dir")
    assert parse_spec("CSV:t.csv") == ("csv", "t.csv")
    for spec in ("imagefolder", "csv:", "hf"):
        with pytest.raises(PrunedropError) as e:
            parse_spec(spec)
        assert "lacks its argument" in message(e)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"image_size": [0]}, "'image_size'"),
        ({"image_size": [4, 4, 4]}, "'image_size'"),
        ({"image_channels": 2}, "'image_channels'"),
        ({"normalize": "custom", "normalize_mean": [0.5]}, "needs 'normalize_std'"),
        ({"normalize_mean": [0.5], "normalize_std": [0.5]}, "only used with normalize: custom"),
        ({"normalize": "custom", "normalize_mean": [0.5], "normalize_std": [0.0]}, "positive"),
        ({"normalize": "zscore"}, "'normalize'"),
        ({"label_column": " "}, "'label_column'"),
    ],
)
def test_recipe_data_keys_are_validated(changes: dict, fragment: str) -> None:
    with pytest.raises(PrunedropError) as e:
        Recipe.from_dict(changes)
    assert fragment in message(e)


# --- csv: -----------------------------------------------------------------------------------------------


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_labels_that_are_names_are_numbered_as_the_recipe_says(tmp_path: Path) -> None:
    """iris.csv with its species in the label column was refused ("csv data must be numeric"); the numbering is the
    model's, so the user says it: sorted (LabelEncoder, np.unique) or the names in the order of the outputs."""
    folder = tmp_path / "iris"
    folder.mkdir()
    write_csv(folder / "train.csv", "a,b,label\n1,2,virginica\n3,4,setosa\n5,6,versicolor\n7,8,setosa\n")
    write_csv(folder / "val.csv", "a,b,label\n1,2,setosa\n3,4,virginica\n")
    with pytest.raises(PrunedropError, match="are names .*--class-names sorted"):
        load_data(f"csv:{folder}")
    data = load_data(f"csv:{folder}", recipe=Recipe(class_names=["sorted"]))
    assert data.train.tensors[1].tolist() == [2, 0, 1, 0] and data.val.tensors[1].tolist() == [0, 2]
    assert data.class_names == ["setosa", "versicolor", "virginica"] and data.num_classes == 3
    # the order of the model's outputs, as --class-names gives it (one comma-separated value); a fourth class that the
    # data lacks still counts as an output
    given = load_data(f"csv:{folder}", recipe=Recipe(class_names=["virginica, setosa,versicolor,unseen"]))
    assert given.train.tensors[1].tolist() == [0, 1, 2, 1] and given.num_classes == 4
    with pytest.raises(PrunedropError, match="'virginica' of .* are not among the class names given"):
        load_data(f"csv:{folder}", recipe=Recipe(class_names=["setosa", "versicolor"]))
    write_csv(folder / "val.csv", "a,b,label\n1,2,0\n")
    with pytest.raises(PrunedropError, match="names in some files and class indices in others"):
        load_data(f"csv:{folder}", recipe=Recipe(class_names=["sorted"]))


@pytest.mark.parametrize("value", [["a", "b", "a"], ["a,,b"], [""]])
def test_class_names_must_name_each_class_once(value: list[str]) -> None:
    with pytest.raises(PrunedropError, match="class_names"):
        Recipe(class_names=value)


def test_csv_classification(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i % 3},{i * 0.5}\n" for i in range(30))
    path = write_csv(tmp_path / "t.csv", "x1,label,x2\n" + rows + "\n")  # the label column may be anywhere
    bundle = load_data(f"csv:{path}", val_fraction=0.2)
    assert bundle.input_shape == (2,) and bundle.num_classes == 3
    assert (len(bundle.train), len(bundle.val)) == (24, 6)
    x, y = bundle.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    i = int(x[0, 0])
    assert x[0, 1] == pytest.approx(i * 0.5) and int(y[0]) == i % 3


@pytest.mark.parametrize("name", ["", "Unnamed: 0"])
def test_csv_with_pandas_row_index(tmp_path: Path, name: str) -> None:
    """DataFrame.to_csv() without index=False writes the row index as a first, unnamed column (shuffled rows keep
    their old index); it was fed to the model as one more feature."""
    order = np.random.default_rng(0).permutation(20)
    rows = "".join(f"{k},{i},{i * 0.5},{i % 2}\n" for k, i in zip(order, range(20)))
    bundle = load_data(f"csv:{write_csv(tmp_path / 't.csv', f'{name},a,b,label' + chr(10) + rows)}", val_fraction=0.25)
    assert bundle.input_shape == (2,)
    x, y = bundle.train.tensors
    assert x[:, 1].tolist() == pytest.approx((x[:, 0] * 0.5).tolist()) and y.tolist() == (x[:, 0] % 2).long().tolist()
    # a first unnamed column that is no row index (repeated values) stays a feature
    kept = load_data(f"csv:{write_csv(tmp_path / 'u.csv', ',a,label' + chr(10) + '1,2,0' + chr(10) + '1,3,1' + chr(10))}",
                     val_fraction=0.5)
    assert kept.input_shape == (2,)


def test_csv_regression_and_label_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "a,b,target\n" + "".join(f"{i},1,{i / 4}\n" for i in range(20)))
    with pytest.raises(PrunedropError) as e:
        load_data(f"csv:{path}")
    assert "no label column 'label'" in message(e) and "a, b, target" in message(e)
    with pytest.raises(PrunedropError) as e:
        load_data(f"csv:{path}", recipe=Recipe(label_column="target"))
    assert "0.25" in message(e) and "loss: mse" in message(e)
    bundle = load_data(f"csv:{path}", recipe=Recipe(label_column="target", loss="mse"))
    x, y = bundle.train.tensors
    assert y.dtype == torch.float32 and bundle.num_classes is None
    assert torch.equal(y, x[:, 0] / 4)
    check_labels(bundle, 1)  # a regression target is no class index


def test_csv_folder_with_splits(tmp_path: Path) -> None:
    for name, n in (("train", 12), ("val", 4), ("test", 3)):
        write_csv(tmp_path / f"{name}.csv", "f,label\n" + "".join(f"{i},{i % 2}\n" for i in range(n)))
    bundle = load_data(f"csv:{tmp_path}")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 4, 3)
    write_csv(tmp_path / "test.csv", "g,label\n1,0\n")
    with pytest.raises(PrunedropError) as e:
        load_data(f"csv:{tmp_path}")
    assert "['g']" in message(e) and "['f']" in message(e)


@pytest.mark.parametrize(("separator", "decimal"), [(";", ","), (";", "."), ("\t", "."), ("|", ".")])
def test_csv_with_another_separator(tmp_path: Path, separator: str, decimal: str) -> None:
    """A semicolon-separated file (as spreadsheets write where the decimal mark is a comma) was read as one column
    named "x1;label;x2" and refused for having no label column."""
    rows = "".join(f"{i}{separator}{i % 3}{separator}{str(i * 0.5).replace('.', decimal)}\n" for i in range(30))
    path = write_csv(tmp_path / "t.csv", f"x1{separator}label{separator}x2\n" + rows)
    bundle = load_data(f"csv:{path}", val_fraction=0.2)
    assert bundle.input_shape == (2,) and bundle.num_classes == 3
    x, y = bundle.train.tensors
    i = int(x[0, 0])
    assert x[0, 1] == pytest.approx(i * 0.5) and int(y[0]) == i % 3


def test_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a;label\n" + "".join(f"{i};{i % 2}\n" for i in range(10)), encoding="utf-8-sig")
    assert load_data(f"csv:{path}", val_fraction=0.2).input_shape == (1,)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["is empty", "header"]),
        ("a,label\n", ["header but no rows"]),
        ("a,label\n1,0\n2,x\n", ["'label'", "line 3", "'x'"]),
        ("a,b,label\n1,2,0\n1,,1\n", ["'b'", "line 3", "is empty"]),
        ("a,b,label\n1,2,0\n1,2\n", ["line 3", "2 values", "3 columns"]),
        ("a,b,label\n1,nan,0\n", ["'b'", "line 2", "finite"]),
        ("a,a,label\n1,2,0\n", ["'a' twice"]),
        ("label\n1\n", ["only the label column"]),
        ("a,label\n1,-1\n", ["-1", "whole numbers"]),
        ("a,label\n1,0\n", []),
    ],
)
def test_bad_csv(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write_csv(tmp_path / "t.csv", text)
    if not fragments:  # the one good file: one row is too few to split off validation, a different error
        with pytest.raises(PrunedropError, match="too few"):
            load_data(f"csv:{path}")
        return
    with pytest.raises(PrunedropError) as e:
        load_data(f"csv:{path}")
    for fragment in fragments:
        assert fragment in message(e)


def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(PrunedropError) as e:
        load_data(f"csv:{tmp_path / 'nope.csv'}")
    assert "does not exist" in message(e)
    with pytest.raises(PrunedropError) as e:
        load_data(f"csv:{tmp_path}")
    assert "no train.csv" in message(e)


# --- hf: ------------------------------------------------------------------------------------------------


def test_hf_parquet_file_and_folder(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"x1": np.arange(20, dtype=np.float64), "x2": np.ones(20, np.int32),
                      "label": np.arange(20) % 4})
    pq.write_table(table, tmp_path / "one.parquet")
    bundle = load_data(f"hf:{tmp_path / 'one.parquet'}", val_fraction=0.25)
    assert bundle.input_shape == (2,) and bundle.num_classes == 4 and len(bundle.train) == 15
    x, y = bundle.train.tensors
    assert int(y[0]) == int(x[0, 0]) % 4 and float(x[0, 1]) == 1.0
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "train-00000-of-00001.parquet")
    pq.write_table(table.slice(0, 5), folder / "validation-00000-of-00001.parquet")
    pq.write_table(table.slice(5, 3), folder / "test-00000-of-00001.parquet")
    bundle = load_data(f"hf:{tmp_path / 'hub'}")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (20, 5, 3)
    pq.write_table(table, folder / "extra.parquet")
    with pytest.raises(PrunedropError) as e:
        load_data(f"hf:{tmp_path / 'hub'}")
    assert "extra.parquet" in message(e) and "names no split" in message(e)


@pytest.mark.parametrize(
    ("columns", "fragments"),
    [
        ({"x": [1.0, 2.0], "y": [0, 1]}, ["no label column 'label'"]),
        ({"x": ["a", "b"], "label": [0, 1]}, ["column 'x'", "not numbers"]),
        ({"x": [1.0, None], "label": [0, 1]}, ["column 'x'", "row 1"]),
        ({"x": [1.0, 2.0], "label": [0.5, 1.0]}, ["0.5", "loss: mse"]),
        ({"x": [[1.0, 2.0], [3.0]], "label": [0, 1]}, ["same shape"]),
    ],
)
def test_bad_hf_tables(tmp_path: Path, columns: dict, fragments: list[str]) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(columns), tmp_path / "t.parquet")
    with pytest.raises(PrunedropError) as e:
        load_data(f"hf:{tmp_path / 't.parquet'}")
    for fragment in fragments:
        assert fragment in message(e)


def test_hf_array_column(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pixels = [np.full((2, 3), i, np.float32).tolist() for i in range(10)]
    pq.write_table(pa.table({"pixel_values": pixels, "label": [i % 2 for i in range(10)]}), tmp_path / "t.parquet")
    bundle = load_data(f"hf:{tmp_path / 't.parquet'}", val_fraction=0.2)
    assert bundle.input_shape == (2, 3)
    x, y = bundle.train.tensors
    assert torch.all(x[0] == x[0, 0, 0]) and int(y[0]) == int(x[0, 0, 0]) % 2


def test_hf_save_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    images = [Image.new("RGB", (4, 3), (i * 20, 0, 0)) for i in range(9)]
    train = datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(9)]}, features=features)
    datasets.DatasetDict({"train": train, "test": train.select(range(3))}).save_to_disk(str(tmp_path / "dd"))
    bundle = load_data(f"hf:{tmp_path / 'dd'}", val_fraction=0.3, recipe=Recipe(image_size=[2, 2]))
    assert bundle.input_shape == (3, 2, 2) and bundle.num_classes == 3
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (6, 3, 3)
    x, y = bundle.test[2]
    torch.testing.assert_close(x[0], torch.full((2, 2), 40 / 255))
    assert y == 2
    numeric = datasets.Dataset.from_dict({"f": [float(i) for i in range(10)], "label": [0, 1] * 5})
    numeric.save_to_disk(str(tmp_path / "one"))
    assert load_data(f"hf:{tmp_path / 'one'}").input_shape == (1,)
    named = datasets.DatasetDict({"training": numeric})
    named.save_to_disk(str(tmp_path / "named"))
    with pytest.raises(PrunedropError) as e:
        load_data(f"hf:{tmp_path / 'named'}")
    assert "no 'train' split" in message(e) and "training" in message(e)


def test_hf_without_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now fails as if it were not installed
    with pytest.raises(PrunedropError) as e:
        load_data(f"hf:{tmp_path / 'dd'}")
    assert "pip install 'prunedrop[hf]'" in message(e)
    with pytest.raises(PrunedropError) as e:
        load_data(f"hf:{tmp_path / 'nothing'}")
    assert "does not exist" in message(e)
