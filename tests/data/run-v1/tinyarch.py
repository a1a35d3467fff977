from prunedrop.testing import TinyMLP


def build():
    return TinyMLP(16, (24, 12), 3)
