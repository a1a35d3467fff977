"""A Hugging Face BERT classifier and a tokenized ``datasets`` folder, for ``prunedrop compress MODEL_FOLDER
--data hf:DATA_FOLDER``: scikit-learn's digits as sentences of 64 token ids (each 8x8 image's pixel values 0-16,
row by row), the splits of prunedrop's ``digits`` spec (its fixed stratified test split, 10% of the rest for
validation, seed 0).

    python benchmarks/hf_text.py [--out /tmp/hf-text]
    prunedrop compress /tmp/hf-text/model --data hf:/tmp/hf-text/data -o /tmp/hf-text/run

The model: ``BertForSequenceClassification`` with 2 layers, hidden size 64, 4 heads, feed-forward 128, vocabulary
18 (ids 0-16 and the pad id 17, so that the 0 pixels are tokens, not padding), trained from scratch here (AdamW
2e-3, batch 32, 40 epochs, seed 0, one thread), saved with ``save_pretrained``; the data is saved with
``save_to_disk`` with the ``attention_mask`` a tokenizer writes (prunedrop leaves it out and masks the pad id).
Prints the dense model's validation and test accuracy and writes them to ``OUT/dense.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch

from prunedrop.data import load_data

PAD = 17


def token_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The digits spec's splits as (ids, labels): ids = the pixel values 0-16, 64 per image."""
    bundle = load_data("digits")
    out = {}
    for name, split in (("train", bundle.train), ("validation", bundle.val), ("test", bundle.test)):
        x, y = zip(*(split[i] for i in range(len(split))))
        ids = torch.stack(x).reshape(len(x), -1).mul(16).round().long()
        out[name] = (ids, torch.stack(y).long())
    return out


def save_dataset(splits: dict[str, tuple[torch.Tensor, torch.Tensor]], folder: Path) -> None:
    import datasets

    parts = {name: datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                                               "label": y.tolist()})
             for name, (ids, y) in splits.items()}
    datasets.DatasetDict(parts).save_to_disk(str(folder))


def build() -> torch.nn.Module:
    import transformers

    config = transformers.BertConfig(vocab_size=PAD + 1, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, num_labels=10,
                                     pad_token_id=PAD)
    return transformers.BertForSequenceClassification(config)


def accuracy(model: torch.nn.Module, ids: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=(ids != PAD).long()).logits
    return float((logits.argmax(1) == y).float().mean()) * 100


def train(model: torch.nn.Module, ids: torch.Tensor, y: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor],
          epochs: int = 40) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(y), generator=generator).split(32):
            loss = model(input_ids=ids[batch], attention_mask=(ids[batch] != PAD).long(), labels=y[batch]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.3f}, validation accuracy {accuracy(model, *val):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/hf-text"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    splits = token_splits()
    save_dataset(splits, args.out / "data")
    model = build()
    start = time.perf_counter()
    train(model, *splits["train"], splits["validation"])
    seconds = time.perf_counter() - start
    model.save_pretrained(str(args.out / "model"))
    result = {name: accuracy(model, *split) for name, split in splits.items()}
    result["train_seconds"] = round(seconds, 1)
    result["sizes"] = {name: len(split[1]) for name, split in splits.items()}
    (args.out / "dense.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result))
    print(f"prunedrop compress {args.out / 'model'} --data hf:{args.out / 'data'} -o {args.out / 'run'}")


if __name__ == "__main__":
    main()
