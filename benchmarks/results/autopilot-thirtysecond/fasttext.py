"""A fastText-style classifier: the non-zero pixels of a digit as a bag of (position, level) tokens, padded with 0."""
from torch import nn


class FastText(nn.Module):
    def __init__(self, vocab: int = 64 * 16 + 1, dim: int = 24):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="mean", padding_idx=0)
        self.fc = nn.Linear(dim, 10)

    def forward(self, ids):
        return self.fc(self.bag(ids))


def fasttext():
    return FastText()


class FastTextSparse(FastText):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(64 * 16 + 1, 24, mode="mean", padding_idx=0, sparse=True)


def fasttext_sparse():
    return FastTextSparse()


class TokenSparse(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(64 * 16 + 1, 16, padding_idx=0, sparse=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, ids):
        return self.fc(self.emb(ids).sum(1))


def token_sparse():
    return TokenSparse()
