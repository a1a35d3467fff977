"""Hostile data against a model: what only the data's batches, its labels, its token ids, its dtypes or the model's
outputs on it show. Each refusal is one line, before any file (no output folder left behind), from the CLI and from
Python alike; nothing waits for ever on data that yields no batch."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from prunedrop.cli import cli
from prunedrop.data import DataBundle, load_data
from prunedrop.errors import PrunedropError
from prunedrop.recipes import Recipe
from prunedrop.testing import write_tiny_project

FAST_RECIPE = """\
epochs: 1
batch_size: 16
eval_batch_size: 64
lr: 0.003
lr_schedule: constant
finetune_epochs: 0
device: cpu
latency_runs: 0
plots: false
mc_samples: 0
quantize: none
"""

USER_DATA = textwrap.dedent("""\
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset


    def _splits():
        z = np.load("data.npz")
        return (torch.tensor(z["x_train"]), torch.tensor(z["y_train"]), torch.tensor(z["x_val"]),
                torch.tensor(z["y_val"]))


    def single_batches():
        xt, yt, xv, yv = _splits()
        return DataLoader(TensorDataset(xt, yt), batch_size=1), TensorDataset(xv, yv)


    def no_batch():
        xt, yt, xv, yv = _splits()
        return DataLoader(TensorDataset(xt[:3], yt[:3]), batch_size=8, drop_last=True), TensorDataset(xv, yv)


    def float64():
        xt, yt, xv, yv = _splits()
        return TensorDataset(xt.double(), yt), TensorDataset(xv.double(), yv)


    def float64_train():
        xt, yt, xv, yv = _splits()
        return TensorDataset(xt.double(), yt), TensorDataset(xv, yv)
    """)

ARCHS = {
    "bnarch": ("from torch import nn\n\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), "
               "nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 3))\n"),
    "nanarch": ("from torch import nn\n\n\nclass Log(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.a = nn.Linear(16, 3)\n\n    def forward(self, x):\n"
                "        return self.a(x.flatten(1)).log()\n\n\ndef build():\n    return Log()\n"),
    "embarch": ("from torch import nn\n\n\nclass Emb(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                "        self.e = nn.Embedding(10, 4)\n        self.out = nn.Linear(32, 3)\n\n"
                "    def forward(self, x):\n        return self.out(self.e(x).flatten(1))\n\n\n"
                "def build():\n    return Emb()\n"),
}


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's folder, the current one and on sys.path: the tiny project, the data functions and the models above."""
    write_tiny_project(tmp_path, n=60, n_val=20, recipe=FAST_RECIPE)
    (tmp_path / "userdata.py").write_text(USER_DATA)
    for name, source in ARCHS.items():
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("tinyarch", "userdata", *ARCHS):
        sys.modules.pop(name, None)


def _save_state(folder: Path, arch: str) -> str:
    import importlib

    torch.manual_seed(0)
    torch.save(importlib.import_module(arch).build().state_dict(), folder / f"{arch}.pt")
    return f"{arch}.pt"


def _timed_out(signum: int, frame: object) -> None:
    raise TimeoutError("compress ran past the test's time limit (a loop waiting for a batch?)")


def _refused(args: list[str], *needles: str) -> str:
    """``compress`` with ``args`` is a one-line error holding ``needles``, and leaves no output folder; within two
    minutes (a loop over a loader that yields nothing never ended, deaf to SIGTERM)."""
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(120)
    try:
        result = CliRunner().invoke(cli, ["compress", *args, "--recipe", "recipe.yaml", "-q", "-o", "out"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output
    assert not Path("out").exists(), sorted(p.name for p in Path("out").iterdir())
    return result.output


# ------------------------------------------------------------------------------- 1. batches of one sample


def _bundle(train, val=None) -> DataBundle:
    val = val if val is not None else TensorDataset(torch.randn(4, 16), torch.zeros(4, dtype=torch.long))
    return DataBundle(name="t", train=train, val=val, test=None, input_shape=(16,), num_classes=3)


def test_a_training_loader_of_batch_size_1_keeps_every_batch() -> None:
    """A loader of batch_size=1 lost every batch (each one sample), and the autopilot's probe went round empty
    epochs for ever; a last batch of one after larger ones is still left out (a BatchNorm cannot train on it)."""
    x, y = torch.randn(7, 16), torch.arange(7) % 3
    single = _bundle(DataLoader(TensorDataset(x, y), batch_size=1))
    assert [len(b[1]) for b in single.loader("train", 100, shuffle=True)] == [1] * 7
    remainder = _bundle(DataLoader(TensorDataset(x, y), batch_size=3))
    assert [len(b[1]) for b in remainder.loader("train", 100, shuffle=True)] == [3, 3]
    one = _bundle(DataLoader(TensorDataset(x[:1], y[:1]), batch_size=4))
    assert [len(b[1]) for b in one.loader("train", 100, shuffle=True)] == [1]


def test_training_data_that_yields_no_batch_is_an_error_never_an_empty_epoch() -> None:
    x, y = torch.randn(3, 16), torch.arange(3) % 3
    loader = _bundle(DataLoader(TensorDataset(x, y), batch_size=8, drop_last=True)).loader("train", 8, shuffle=True)
    with pytest.raises(PrunedropError, match="the training data yields no batch"):
        list(loader)
    with pytest.raises(PrunedropError, match="the train data of 't' is empty"):
        _bundle(TensorDataset(x[:0], y[:0])).loader("train", 8, shuffle=True)


def test_a_loader_of_single_samples_trains_a_model_without_batchnorm(folder: Path) -> None:
    """End to end in a fresh interpreter with a time limit: before, the run never ended (nor heard SIGTERM)."""
    proc = subprocess.run([sys.executable, "-m", "prunedrop", "compress", "model.pt", "--arch", "tinyarch:build",
                           "--data", "python:userdata:single_batches", "--recipe", "recipe.yaml", "-q", "-o", "out"],
                          cwd=folder, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (folder / "out" / "model.onnx").is_file()


@pytest.mark.parametrize(("data", "recipe", "why"), [
    ("python:userdata:single_batches", "", "the training DataLoader's batch_size is 1"),
    ("npz:data.npz", "batch_size: 1\n", "recipe key batch_size is 1"),
])
def test_single_sample_batches_for_a_batchnorm_model_are_one_line_before_any_file(folder: Path, data: str,
                                                                                  recipe: str, why: str) -> None:
    (folder / "recipe.yaml").write_text(FAST_RECIPE + recipe)
    _refused([_save_state(folder, "bnarch"), "--arch", "bnarch:build", "--data", data],
             f"every training batch holds one sample ({why}), which the model cannot train on",
             "BatchNorm1d '2' normalises over the batch", "give batches of at least 2")


def test_a_training_loader_that_yields_no_batch_is_one_line_before_any_file(folder: Path) -> None:
    _refused(["model.pt", "--arch", "tinyarch:build", "--data", "python:userdata:no_batch"],
             "the train data of 'python:userdata:no_batch' yields no batch", "drop_last=True")


# ------------------------------------------------------------------------------- 2. checks that read every sample


def _write_npz(folder: Path, **changes: np.ndarray) -> None:
    z = dict(np.load(folder / "data.npz"))
    z.update(changes)
    np.savez(folder / "data.npz", **z)


@pytest.mark.parametrize("split", ["val", "test"])
def test_every_label_ignored_is_one_line_before_any_file_and_again_on_a_rerun(folder: Path, split: str) -> None:
    """The error came after run.json was written, so that running the command again said "output folder is not
    empty"."""
    z = np.load(folder / "data.npz")
    _write_npz(folder, **{f"x_{split}": z["x_val"], f"y_{split}": np.full(len(z["y_val"]), -100)})
    name = "validation" if split == "val" else "test"
    for _ in range(2):
        _refused(["model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz"],
                 f"every label of the {name} data is -100 (a label to ignore)")


def test_python_compress_measures_before_it_makes_the_folder(folder: Path) -> None:
    from prunedrop.pipeline import compress
    from prunedrop.testing import TinyMLP

    _write_npz(folder, y_val=np.full(20, -100))
    data = load_data("npz:data.npz")
    with pytest.raises(PrunedropError, match="every label of the validation data is -100"):
        compress(TinyMLP(16, (24, 12), 3), data, Recipe(epochs=1), folder / "py-out", progress=False,
                 log=lambda _: None)
    assert not (folder / "py-out").exists()
    # so is a model with nothing to convert, checked by the CLI alone before
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 16))

        def forward(self, x):
            return x.flatten(1) @ self.w.t()

    with pytest.raises(PrunedropError, match="no layer of the model can be converted"):
        compress(Plain(), load_data("npz:data.npz"), Recipe(epochs=1), folder / "py-out", progress=False,
                 log=lambda _: None)
    assert not (folder / "py-out").exists()


# ------------------------------------------------------------------------------- 3. outputs that are not finite


def test_outputs_that_are_not_finite_are_one_line_before_any_file(folder: Path) -> None:
    """The baseline passed, then training said "the variational loss became nan ... the last good checkpoint is
    checkpoint-variational.pt", a file that did not exist."""
    out = _refused([_save_state(folder, "nanarch"), "--arch", "nanarch:build", "--data", "npz:data.npz"],
                   "the model's outputs are not finite (NaN or inf) on ", " of the 20 validation samples")
    assert "checkpoint" not in out


def test_a_logit_of_minus_infinity_masks_a_class_and_passes() -> None:
    from prunedrop.stages.baseline import measure_before_files

    class Masked(nn.Module):
        def __init__(self, fill: float = float("-inf")) -> None:
            super().__init__()
            self.a = nn.Linear(16, 3)
            self.fill = fill

        def forward(self, x):
            return self.a(x).masked_fill(torch.tensor([False, False, True]), self.fill)

    x = torch.randn(10, 16)
    data = _bundle(TensorDataset(x, torch.zeros(10, dtype=torch.long)), TensorDataset(x, torch.arange(10) % 2))
    assert measure_before_files(Masked(), data, Recipe()).scores["val"].shape == (10,)
    with pytest.raises(PrunedropError, match=r"not finite \(NaN or inf\) on 10 of the 10 validation samples"):
        measure_before_files(Masked(float("inf")), data, Recipe())


# ------------------------------------------------------------------------------- 4. token ids beyond an embedding


def _ids(n: int, high: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, size=(n, 8)).astype(np.float32)


@pytest.mark.parametrize(("split", "row", "name"), [("train", 17, "training"), ("val", 11, "validation"),
                                                    ("test", 3, "test")])
def test_token_ids_beyond_an_embedding_are_one_line_before_any_file(folder: Path, split: str, row: int,
                                                                    name: str) -> None:
    """An IndexError traceback from the baseline measurement, after run.json, where the first samples' ids were in
    range; the split, the id and the embedding are named."""
    z = {f"x_{s}": _ids(n, 10, i) for i, (s, n) in enumerate((("train", 40), ("val", 20), ("test", 20)))}
    z[f"x_{split}"][row, 5] = 12
    y = {f"y_{s}": np.arange(len(z[f"x_{s}"])) % 3 for s in ("train", "val", "test")}
    np.savez(folder / "tok.npz", **z, **y)
    _refused([_save_state(folder, "embarch"), "--arch", "embarch:build", "--data", "npz:tok.npz"],
             f"the {name} inputs of npz:tok.npz hold token id 12 but Embedding 'e' has 10 rows")


class _Items(Dataset):
    """Token ids that are no TensorDataset: read one by one."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], 0


def test_token_ids_of_every_kind_of_embedding_and_split() -> None:
    from prunedrop.data.token_ids import check_token_ids
    from prunedrop.stages.baseline import measure_before_files

    class Bag(nn.Module):
        def __init__(self, padding_idx: int | None = None) -> None:
            super().__init__()
            self.bag = nn.EmbeddingBag(10, 4, mode="sum", padding_idx=padding_idx)
            self.out = nn.Linear(4, 3)

        def forward(self, x):
            return self.out(self.bag(x))

    ids = torch.randint(0, 10, (12, 8), generator=torch.Generator().manual_seed(0))
    bad = ids.clone()
    bad[9, 2] = -1  # padding written as -1
    with pytest.raises(PrunedropError, match=r"the validation inputs of t hold token id -1 but EmbeddingBag 'bag' "
                                             r"has 10 rows; ids run from 0 to 9: pad with the padding_idx 0"):
        check_token_ids(Bag(padding_idx=0), _bundle(TensorDataset(ids, ids[:, 0] % 3), TensorDataset(bad, ids[:, 0])))
    # a split read one sample at a time is checked where every sample is read: the measurement before any file
    data = _bundle(TensorDataset(ids, ids[:, 0] % 3), _Items(torch.where(bad < 0, 10, bad)))
    check_token_ids(Bag(), data)
    with pytest.raises(PrunedropError, match="the validation inputs of t hold token id 10 but EmbeddingBag 'bag'"):
        measure_before_files(Bag(), data, Recipe())


# ------------------------------------------------------------------------------- 5. dtypes and files


@pytest.mark.parametrize(("function", "name"), [("float64", "validation"), ("float64_train", "training")])
def test_float64_inputs_are_named_as_the_inputs_before_any_file(folder: Path, function: str, name: str) -> None:
    """float64 inputs with a float32 model were told to "save the model as float32 (model.float())"; float64 in the
    training split alone was a traceback at the first step, after run.json and original.onnx."""
    out = _refused(["model.pt", "--arch", "tinyarch:build", "--data", f"python:userdata:{function}"],
                   f"the model cannot run on the {name} data's inputs", "the inputs are float64 and the model's "
                   "parameters float32: give float32 inputs (x.float()")
    assert "model.float()" not in out


def test_token_ids_a_float32_model_refuses_for_another_reason_get_no_dtype_advice() -> None:
    """A float32 text model whose position embedding is shorter than the sentences failed with a shape error, and the
    int64 ids beside float32 parameters drew "give prunedrop a float32 model" (it was one)."""
    from torch import nn

    from prunedrop.task import output_shape_on

    class Positions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens, self.positions, self.head = nn.Embedding(20, 8), nn.Parameter(torch.zeros(16, 8)), nn.Linear(8, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head((self.tokens(ids) + self.positions).mean(1))

    with pytest.raises(PrunedropError, match="the model cannot run on the data's inputs") as e:
        output_shape_on(Positions(), torch.randint(0, 20, (2, 24)))
    assert "float32 model" not in e.value.message and "give float" not in e.value.message
    assert "must match the size" in e.value.message  # torch's own reason, in the one line


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.write_text("hello\n"), "is a text file (it starts with 'hello'), not an npz archive"),
    (lambda p: p.write_text("a,b,label\n1,2,0\n"), "a table? read it as csv:FILE"),
    (lambda p: p.mkdir(), "is a folder, not a file"),
    (lambda p: p.write_bytes(b""), "is empty (0 bytes), not an npz archive"),
    (lambda p: p.write_bytes(__import__("pickle").dumps([1, 2])), "is a pickle"),
    (lambda p: torch.save({"w": torch.zeros(2)}, p), "is a file written by torch.save"),
])
def test_a_file_that_is_no_npz_archive_says_what_it_is(tmp_path: Path, make, says: str) -> None:
    make(tmp_path / "data.npz")
    with pytest.raises(PrunedropError, match=None) as e:
        load_data(f"npz:{tmp_path / 'data.npz'}")
    assert says in e.value.message and "pickled (object) data" not in e.value.message
    assert "does not exist" not in e.value.message


@pytest.mark.parametrize("inputs, says", [
    (lambda x: x.astype(np.complex64) * (1 + 1j), "holds complex numbers"),
    (lambda x: x.astype(np.float64) * 1e300, "beyond float32's range"),
])
def test_npz_inputs_that_float32_cannot_hold_are_one_line(tmp_path: Path, inputs, says: str) -> None:
    """Complex inputs lost their imaginary part with only numpy's warning; float64 values beyond float32's range became
    inf, read as data holding NaN or inf."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4))
    arrays = {"x_train": inputs(x), "y_train": np.arange(20) % 2, "x_val": x[:6].astype(np.float32),
              "y_val": np.arange(6) % 2}
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(PrunedropError) as e:
        load_data(f"npz:{tmp_path / 'd.npz'}")
    assert says in e.value.message and "x_train" in e.value.message
    arrays["x_train"] = x.astype(np.float64)  # float64 within range is read as before
    np.savez(tmp_path / "d.npz", **arrays)
    assert load_data(f"npz:{tmp_path / 'd.npz'}").num_train == 20


def test_csv_values_beyond_float32_are_one_line(tmp_path: Path) -> None:
    """A CSV value of 1e300 became inf in float32, read afterwards as data holding NaN or inf."""
    rows = "\n".join(f"{i % 3},{1e300 if i == 4 else i},{i / 2}" for i in range(30))
    (tmp_path / "d.csv").write_text("label,a,b\n" + rows + "\n")
    with pytest.raises(PrunedropError, match="a feature holds 1e\\+300, beyond float32's range"):
        load_data(f"csv:{tmp_path / 'd.csv'}")
    (tmp_path / "d.csv").write_text("label,a,b\n" + rows.replace("1e+300", "4") + "\n")
    assert load_data(f"csv:{tmp_path / 'd.csv'}").num_train > 0
