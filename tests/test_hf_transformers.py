"""Hugging Face ``transformers`` model folders (prunedrop.storage.hf_model) and tokenized ``hf:`` data
(prunedrop.data.files.tokens): tiny configs built here, token data made here, nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from click.testing import CliRunner  # noqa: E402

from prunedrop.cli import cli  # noqa: E402
from prunedrop.data import fit_inputs, load_data  # noqa: E402
from prunedrop.errors import PrunedropError  # noqa: E402
from prunedrop.export import export_onnx, verify_onnx  # noqa: E402
from prunedrop.recipes import Recipe  # noqa: E402
from prunedrop.storage import load_model  # noqa: E402
from prunedrop.storage.hf_model import HFTextModel, data_recipe  # noqa: E402
from prunedrop.testing import fit  # noqa: E402

VOCAB, PAD = 24, 0


def _configs() -> dict[str, tuple[type, object]]:
    t = transformers
    return {
        "bert": (t.BertForSequenceClassification, t.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32, num_labels=2, pad_token_id=PAD, initializer_range=0.3)),
        "distilbert": (t.DistilBertForSequenceClassification, t.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=32, num_labels=2,
            pad_token_id=PAD, initializer_range=0.3)),
        "gpt2": (t.GPT2ForSequenceClassification, t.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=32, num_labels=2, pad_token_id=PAD,
            bos_token_id=1, eos_token_id=1, initializer_range=0.3)),
    }


def _save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    return folder


def _hf(kind: str, folder: Path, seed: int = 0) -> Path:
    cls, config = _configs()[kind]
    torch.manual_seed(seed)
    return _save(cls(config).eval(), folder)


def _rows(n: int, seed: int) -> dict[str, list]:
    """Sentences of 4 to 12 ids from 1..VOCAB-1; the label says whether id 5 occurs (about a third do)."""
    rng = np.random.default_rng(seed)
    ids = [[int(v) for v in rng.integers(1, VOCAB, size=int(rng.integers(4, 13)))] for _ in range(n)]
    return {"text": [" ".join(map(str, s)) for s in ids], "input_ids": ids,
            "attention_mask": [[1] * len(s) for s in ids], "token_type_ids": [[0] * len(s) for s in ids],
            "label": [int(5 in s) for s in ids]}


def _dataset(folder: Path, rows: dict[str, dict[str, list]] | None = None) -> Path:
    rows = rows or {"train": _rows(300, 1), "validation": _rows(120, 2), "test": _rows(120, 3)}
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in rows.items()}).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {kind: _hf(kind, root / kind) for kind in _configs()}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _dataset(tmp_path_factory.mktemp("tokens") / "ds")


def _padded(seqs: list[list[int]], length: int) -> torch.Tensor:
    return torch.tensor([s + [PAD] * (length - len(s)) for s in seqs])


@pytest.mark.parametrize("kind", ["bert", "distilbert", "gpt2"])
def test_a_model_folder_loads_as_a_module_of_ids_to_logits(folders: dict[str, Path], kind: str) -> None:
    model = load_model(folders[kind])
    assert isinstance(model, HFTextModel) and not model.training and model.pad_token_id == PAD
    reference = getattr(transformers, _configs()[kind][0].__name__).from_pretrained(str(folders[kind])).eval()
    x = _padded([[3, 5, 7, 9, 2, 8], [4, 4, 6]], 8)
    with torch.no_grad():
        out = model(x)
        want = reference(input_ids=x, attention_mask=(x != PAD).long()).logits
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "distilbert", "gpt2"])
def test_padding_is_masked(folders: dict[str, Path], kind: str) -> None:
    """A sentence padded to any length gives the logits of the sentence alone: the pad id is masked."""
    model = load_model(folders[kind])
    sentence = [3, 5, 7, 9, 2]
    with torch.no_grad():
        alone = model(torch.tensor([sentence]))
        padded = model(_padded([sentence], 12))
        unmasked = HFTextModel(model.model, None)(_padded([sentence], 12))
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    if kind != "gpt2":  # GPT-2's causal attention never reads later positions: padding at the end is harmless
        assert not torch.allclose(unmasked, alone, atol=1e-4)  # the mask is what makes them equal


def test_gpt2_conv1d_runs_as_linear(folders: dict[str, Path]) -> None:
    from transformers.pytorch_utils import Conv1D

    model = load_model(folders["gpt2"])
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    assert type(model.model.transformer.h[0].attn.c_attn) is torch.nn.Linear
    original = transformers.GPT2ForSequenceClassification.from_pretrained(str(folders["gpt2"])).eval()
    assert isinstance(original.transformer.h[0].attn.c_attn, Conv1D)
    torch.testing.assert_close(model.model.transformer.h[0].attn.c_attn.weight,
                               original.transformer.h[0].attn.c_attn.weight.t())


@pytest.mark.parametrize("kind", ["bert", "distilbert", "gpt2"])
def test_onnx_export_matches_torch(folders: dict[str, Path], kind: str, tmp_path: Path) -> None:
    model = load_model(folders[kind])
    x = _padded([[3, 5, 7, 9, 2, 8, 1, 1], [4, 4, 6], [9, 5]], 8)
    result = export_onnx(model, x[:2], tmp_path / "m.onnx")
    assert result.path.is_file()
    assert verify_onnx(tmp_path / "m.onnx", model, x) < 1e-4  # another batch size than the export's


def test_tokenized_data_is_padded_and_other_columns_are_named(tokens: Path) -> None:
    notes: list[str] = []
    data = load_data(f"hf:{tokens}", recipe=Recipe(pad_token_id=7), log=notes.append)
    x, y = data.train.tensors
    rows = _rows(300, 1)
    assert x.dtype == torch.int64 and x.shape == (300, 12) and data.val.tensors[0].shape[1] == 12
    first = rows["input_ids"][0]
    assert x[0, :len(first)].tolist() == first and set(x[0, len(first):].tolist()) <= {7}
    assert y.tolist() == rows["label"]
    assert len(notes) == 1 and "padded with id 7 to 12 tokens" in notes[0]
    assert "attention_mask, text, token_type_ids" in notes[0]


def test_the_model_config_pad_id_pads_the_data(folders: dict[str, Path], tmp_path: Path) -> None:
    config = json.loads((folders["bert"] / "config.json").read_text())
    cls, cfg = _configs()["bert"]
    cfg = type(cfg)(**{**cfg.to_dict(), "pad_token_id": 3})
    torch.manual_seed(0)
    folder = _save(cls(cfg), tmp_path / "pad3")
    model = load_model(folder)
    assert config["pad_token_id"] == PAD and model.pad_token_id == 3
    assert data_recipe(model, Recipe()).pad_token_id == 3
    split = {"input_ids": [[1, 2], [5, 6, 7]], "label": [0, 1]}
    ds = _dataset(tmp_path / "ds", {"train": split, "validation": split})
    x = load_data(f"hf:{ds}", recipe=data_recipe(model, Recipe())).train.tensors[0]
    assert x.tolist() == [[1, 2, 3], [5, 6, 7]]
    with pytest.raises(PrunedropError, match="pad_token_id is 0 but the model's config.json pads with 3"):
        data_recipe(model, Recipe(pad_token_id=0))


def test_per_token_labels_are_padded_with_the_ignore_index(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds", {"train": {"input_ids": [[1, 2, 3], [4, 5]] * 4,
                                              "labels": [[0, 1, 0], [1, -100]] * 4}})
    data = load_data(f"hf:{ds}", recipe=Recipe(label_column="labels"), val_fraction=0.25)
    y = torch.cat([data.train.tensors[1], data.val.tensors[1]])
    assert sorted(y.tolist()) == sorted([[0, 1, 0], [1, -100, -100]] * 4)


def _trained_bert(folder: Path) -> Path:
    """A one-layer BERT taught 'does id 5 occur' in a few seconds, saved with save_pretrained."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cls, config = _configs()["bert"]
    model = cls(config)
    rows = _rows(300, 1)
    x = _padded(rows["input_ids"], 12)
    y = torch.tensor(rows["label"])
    fit(HFTextModel(model, PAD).train(), x, y, 80, lr=3e-3)
    model.eval()
    with torch.no_grad():
        accuracy = (HFTextModel(model, PAD)(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9, accuracy  # the task is learnt, so that the run's accuracy means something
    return _save(model, folder)


def test_compress_a_model_folder_end_to_end(tokens: Path, tmp_path: Path) -> None:
    folder = _trained_bert(tmp_path / "bert")
    recipe = tmp_path / "quick.yaml"
    recipe.write_text("latency_runs: 0\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["compress", str(folder), "--data", f"hf:{tokens}", "-o", str(out),
                                      "--epochs", "3", "--finetune-epochs", "1", "--quantize", "none",
                                      "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "tokenized data: input_ids padded with id 0 to 12 tokens" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["parity_max_abs_diff"] < 1e-4
    assert report["test_metric"]["before"] > 90 and report["test_metric"]["after"] > 85
    assert report["total_params_after"] < report["total_params_before"]
    x = _padded(_rows(120, 3)["input_ids"], 12)
    from prunedrop.export import run_onnx

    logits = run_onnx(out / "model.onnx", x)
    assert (logits.argmax(1) == np.array(_rows(120, 3)["label"])).mean() > 0.85
    again = CliRunner().invoke(cli, ["export", str(out), "-o", str(tmp_path / "again.onnx")])  # rebuilt from the folder
    assert again.exit_code == 0 and "onnxruntime max abs diff" in again.output, again.output


def test_compress_refuses_ids_beyond_the_vocabulary(folders: dict[str, Path], tmp_path: Path) -> None:
    rows = _rows(40, 4)
    rows["input_ids"][3] = [2, VOCAB + 6, 1]
    ds = _dataset(tmp_path / "ds", {"train": rows})
    result = CliRunner().invoke(cli, ["compress", str(folders["bert"]), "--data", f"hf:{ds}", "-o",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1 and f"token id {VOCAB + 6}" in result.output
    assert "word_embeddings" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("rows", "message"), [
    ({"input_ids": [[1, 2], [], [3]], "label": [0, 1, 0]}, "row 1 of split 'train' .* has an empty 'input_ids' list"),
    ({"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1]]},
     "no label column 'label' .*columns: input_ids, attention_mask"),
    ({"input_ids": [[1, 2], [3]], "labels": [0, 1]}, "it has 'labels': set label_column: labels"),
    ({"input_ids": [[1.0, 2.5], [3.0]], "label": [0, 1]}, "holds the token id 2.5; token ids are whole numbers"),
    ({"input_ids": [[1, -2], [3]], "label": [0, 1]}, "row 0 .* holds the token id -2"),
    ({"input_ids": [["a", "b"], ["c"]], "label": [0, 1]}, "lists of string, not token ids"),
    ({"input_ids": [1, 2], "label": [0, 1]}, "not lists of token ids; tokenize"),
])
def test_bad_token_data_is_one_line(tmp_path: Path, rows: dict, message: str) -> None:
    ds = _dataset(tmp_path / "ds", {"train": rows})
    with pytest.raises(PrunedropError, match=message):
        load_data(f"hf:{ds}", recipe=Recipe())


def test_a_folder_with_a_config_and_no_weights(folders: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text((folders["bert"] / "config.json").read_text())
    with pytest.raises(PrunedropError, match="holds config.json but no weights .model.safetensors.; save"):
        load_model(tmp_path / "m")


def test_an_unknown_model_type(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _hf("bert", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "no-such-model"}))
    with pytest.raises(PrunedropError, match=r"cannot read .*config.json \(model_type 'no-such-model'"):
        load_model(folder)


def test_a_base_model_without_a_head_names_the_auto_class(tmp_path: Path) -> None:
    _, config = _configs()["bert"]
    torch.manual_seed(0)
    folder = _save(transformers.BertModel(config), tmp_path / "base")
    with pytest.raises(PrunedropError, match="names BertModel, which has no classification head .*"
                                             "AutoModelForSequenceClassification or AutoModelForTokenClassification"):
        load_model(folder)


def test_weights_without_the_head_are_refused(tmp_path: Path) -> None:
    _, config = _configs()["bert"]
    torch.manual_seed(0)
    folder = _save(transformers.BertModel(config), tmp_path / "base")
    text = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**text, "architectures": ["BertForSequenceClassification"]}))
    with pytest.raises(PrunedropError, match="lack .* of BertForSequenceClassification's tensors .*classifier"):
        load_model(folder)


def test_arch_with_a_model_folder_is_refused(folders: dict[str, Path]) -> None:
    with pytest.raises(PrunedropError, match="Hugging Face model folder, which its config.json describes: drop --arch"):
        load_model(folders["bert"], arch="examples.models:lenet300")


def test_custom_code_is_never_run(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = _hf("bert", tmp_path / "m")
    text = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**text, "auto_map": {"AutoModel": "mine.Model"}}))
    with pytest.raises(PrunedropError, match="custom code .auto_map., which prunedrop does not run"):
        load_model(folder)


def test_the_data_fits_the_model_as_token_ids(folders: dict[str, Path], tokens: Path) -> None:
    model = load_model(folders["distilbert"])
    data, note = fit_inputs(model, load_data(f"hf:{tokens}", recipe=data_recipe(model, Recipe())))
    assert note is None and data.train.tensors[0].dtype == torch.int64
    with torch.no_grad():
        assert model(data.example_batch(4)).shape == (4, 2)


def test_a_gpt2_classifier_without_a_pad_id_is_refused(tmp_path: Path) -> None:
    """GPT-2's sequence classifier finds each sentence's end by the pad id; without one it refuses batches."""
    cls, config = _configs()["gpt2"]
    config = type(config)(**{**config.to_dict(), "pad_token_id": None})
    torch.manual_seed(0)
    folder = _save(cls(config), tmp_path / "nopad")
    with pytest.raises(PrunedropError, match="fails on a batch of two sentences .*set pad_token_id in its config.json"):
        load_model(folder)


def test_a_bfloat16_checkpoint_loads_in_float32(tmp_path: Path) -> None:
    """transformers 5 loads a checkpoint in the dtype it was saved in; prunedrop trains and exports float32."""
    cls, config = _configs()["bert"]
    torch.manual_seed(0)
    folder = _save(cls(config).to(torch.bfloat16), tmp_path / "bf16")
    assert json.loads((folder / "config.json").read_text()).get("dtype", "bfloat16") == "bfloat16"
    assert {p.dtype for p in load_model(folder).parameters()} == {torch.float32}


@pytest.mark.parametrize(("kind", "feed_forward"), [("bert", "bert.encoder.layer.0.intermediate.dense"),
                                                    ("gpt2", "transformer.h.0.mlp.c_fc")])
def test_group_vd_removes_feed_forward_units_inside_hf_layers(folders: dict[str, Path], kind: str, feed_forward: str,
                                                               tmp_path: Path) -> None:
    """Structured pruning in HF blocks: the feed-forward units leave (GPT-2's Conv1D, now a Linear, too), the
    attention's projections stay dense (their channels pass through the heads' reshape or a LayerNorm)."""
    from prunedrop.convert import ConversionSummary, to_variational, variational_layers
    from prunedrop.prune import prune
    from prunedrop.recipes import load_recipe
    from prunedrop.slim import slim

    torch.manual_seed(0)
    model = load_model(folders[kind])
    x = _padded([[3, 5, 7, 9, 2, 8, 1, 1], [4, 4, 6], [9, 5]], 8)
    summary = ConversionSummary()
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "group-vd.yaml")
    variational = to_variational(model, recipe, summary=summary, example_input=x[:2]).eval()
    assert f"model.{feed_forward}" in summary.converted
    assert not any("attn" in name or "attention" in name for name in summary.converted)
    with torch.no_grad():
        for layer in variational_layers(variational).values():
            layer.log_alpha_param[::2] = 8.0  # every other unit far past the threshold (log α > 3)
    pruned = prune(variational)
    slimmed = slim(pruned.model.eval(), pruned.unit_masks, x)
    before, after = slimmed.removed[f"model.{feed_forward}"]
    assert after == before // 2 and slimmed.max_abs_diff < 1e-5
    export_onnx(slimmed.model.eval(), x[:2], tmp_path / "slim.onnx")
    assert verify_onnx(tmp_path / "slim.onnx", slimmed.model.eval(), x) < 1e-4


def test_a_token_classifier_gives_its_classes_on_the_second_axis(tmp_path: Path) -> None:
    """AutoModelForTokenClassification's logits are (N, length, classes); prunedrop, like cross_entropy, reads
    (N, classes, length), with the per-token labels padded with -100."""
    from prunedrop.task import fit_task

    _, config = _configs()["bert"]
    torch.manual_seed(0)
    folder = _save(transformers.BertForTokenClassification(type(config)(**{**config.to_dict(), "num_labels": 3})),
                   tmp_path / "tagger")
    model = load_model(folder)
    ids = [[3, 5, 7], [4, 9, 2, 8, 6]]
    split = {"input_ids": ids, "labels": [[v % 3 for v in s] for s in ids]}
    ds = _dataset(tmp_path / "ds", {"train": split, "validation": split})
    recipe = Recipe(label_column="labels")
    data = load_data(f"hf:{ds}", recipe=data_recipe(model, recipe))
    assert data.train.tensors[1].tolist() == [[0, 2, 1, -100, -100], [1, 0, 2, 2, 0]]
    with torch.no_grad():
        assert model(data.train.tensors[0]).shape == (2, 3, 5)
    assert fit_task(model, data, recipe).loss == "cross_entropy"
    export_onnx(model, data.train.tensors[0], tmp_path / "tagger.onnx")
    assert verify_onnx(tmp_path / "tagger.onnx", model, data.train.tensors[0]) < 1e-4


def test_sentences_longer_than_the_model_positions_are_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds", {"train": {"input_ids": [[1, 2, 3] * 14, [4, 5]] * 10, "label": [0, 1] * 10}})
    result = CliRunner().invoke(cli, ["compress", str(folders["distilbert"]), "--data", f"hf:{ds}", "-o",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "hold 42 tokens per sample but the model has 32 positions" in result.output
    assert not (tmp_path / "out").exists()


def test_inspect_and_compress_without_token_data(folders: dict[str, Path], tokens: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    compress = runner.invoke(cli, ["compress", str(folders["bert"]), "-o", str(tmp_path / "out")])  # no --data
    assert compress.exit_code == 2 and "give its tokenized data, --data hf:PATH" in compress.output
    assert not (tmp_path / "out").exists()
    bare = runner.invoke(cli, ["inspect", str(folders["bert"])])
    assert bare.exit_code == 2 and "takes token ids: give its tokenized data (--data hf:PATH)" in bare.output
    given = runner.invoke(cli, ["inspect", str(folders["bert"]), "--data", f"hf:{tokens}"])
    assert given.exit_code == 0, given.output
    assert "model.bert.encoder.layer.0.intermediate.dense" in given.output and "convert" in given.output


def test_a_config_that_is_no_json_and_weights_that_are_no_safetensors(folders: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    broken = _hf("bert", tmp_path / "config")
    (broken / "config.json").write_text("{\"model_type\": \"bert\",")
    with pytest.raises(PrunedropError, match="config.json is not a JSON object; save the model again"):
        load_model(broken)
    garbage = _hf("bert", tmp_path / "weights")
    (garbage / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PrunedropError, match="transformers cannot load the weights of .* into "
                                             "BertForSequenceClassification .*save the model again"):
        load_model(garbage)
