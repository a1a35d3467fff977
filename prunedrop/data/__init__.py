"""Data specs for ``prunedrop compress --data``: turn a short string into train/val/test data.

Valid specs (see :func:`parse_spec`):

``digits``
    scikit-learn's bundled 8x8 digits; needs no files. Inputs ``(N, 1, 8, 8)`` float32 in [0, 1]. It has no
    official test split, so a stratified 20% is held out as test with a *fixed* seed (the same test set for
    every ``seed``); the validation split then comes from the rest.
``mnist`` / ``fashion-mnist``
    the four IDX files (gzipped or not), looked for in ``data_dir``, ``data_dir/<name>``, torchvision's
    ``data_dir/<MNIST|FashionMNIST>/raw`` and where Debian installs them (``/usr/share/datasets/<name>``).
    Inputs ``(N, 1, 28, 28)`` float32 in [0, 1]; ``t10k`` is the test set.
``idx:DIR``
    any folder with ``train-images``/``train-labels`` IDX files and optionally ``t10k-*`` or ``test-*`` ones.
    ``uint8`` images are scaled to [0, 1]; other IDX dtypes are cast to float32 unscaled.
``npz:FILE``
    arrays ``x_train``, ``y_train`` and optionally ``x_val``/``y_val``, ``x_test``/``y_test`` (any case; ``valid``
    for ``val``; or one ``x``/``y`` pair). Inputs are cast to float32 **as given: no scaling or normalisation is
    applied** (whole numbers that the model takes only as integers, token ids for an ``nn.Embedding``, become int64,
    and images without a channel axis or channels last are laid out as the model takes them: :func:`fit_inputs`);
    labels become int64. With the recipe's
    ``loss: mse`` (regression), float ``y_*`` arrays shaped ``(N,)`` or ``(N, k)`` are targets, cast to float32.
``imagefolder:DIR``
    one sub-folder per class (labels: the sorted folder names' indices); ``train/`` and ``val/`` (or ``valid/``,
    ``validation/``) and ``test/`` sub-folders, each such a tree, when present. Images are decoded with Pillow
    on access, resized (recipe key ``image_size``), converted to 1 or 3 channels (``image_channels``), scaled to
    [0, 1] and optionally normalised (``normalize``). See :mod:`prunedrop.data.files`.
``csv:FILE`` / ``csv:DIR``
    a CSV table with a header row: the label column (recipe key ``label_column``, default ``label``) and numeric
    feature columns, inputs ``(N, F)`` float32 as given; integer class labels, or float targets when the recipe's
    ``loss`` is ``mse``. A folder holds ``train.csv`` and optionally ``val.csv`` and ``test.csv``. Comma-separated,
    or semicolon- (decimal commas allowed), tab- or bar-separated: the header line tells.
``hf:PATH``
    a folder written by Hugging Face ``datasets``' ``save_to_disk`` (splits ``train``, ``validation``, ``test``),
    a parquet file, or a folder of ``train-*.parquet`` / ``validation-*`` / ``test-*`` files; inputs from one
    image column, one column of arrays or the numeric columns; labels from ``label_column``. Local only.
``python:MODULE:FUNCTION``
    the user's function, called with no arguments, returns a :class:`DataBundle`, a dict with ``train`` and
    optional ``val``/``test``, or a tuple ``(train, val)`` / ``(train, val, test)`` of Datasets or DataLoaders
    whose items are ``(input, label)`` pairs; with ``loss: mse`` the labels are float targets, a number or a
    vector of the model's output size per sample. Exceptions raised inside the user's function propagate
    unchanged, so that their traceback points into the user's code.

When no validation set is given, a seeded ``val_fraction`` of the training data is split off; the training
set that remains is in that seeded random order, so ``train_limit`` (keep the first n) picks a random subset
rather than, say, only the first classes of a dataset sorted by label.

Modules: :mod:`.spec` (parsing ``KIND:ARG``), :mod:`.load` (:func:`load_data`: one spec to a bundle),
:mod:`.bundle` (:class:`DataBundle` and its seeded loaders), :mod:`.assemble` (checking the splits, the
validation split, the class count, :func:`check_labels`), :mod:`.checks` (the checks of tensors and labels that
every reader shares), the readers :mod:`.idx` (IDX files), :mod:`.named` (``digits``, ``mnist``,
``fashion-mnist``), :mod:`.npz` and :mod:`.user_function` (``python:``), and the :mod:`.files` package
(``imagefolder:``, ``csv:``, ``hf:``), imported only when such a spec is loaded.
"""

from .assemble import binary_labels, check_labels, fit_inputs
from .bundle import DataBundle, first_batches
from .idx import read_idx
from .load import load_data
from .named import SYSTEM_DATA_DIRS
from .spec import NAMED_DATASETS, parse_spec

__all__ = [
    "NAMED_DATASETS",
    "SYSTEM_DATA_DIRS",
    "DataBundle",
    "binary_labels",
    "check_labels",
    "first_batches",
    "fit_inputs",
    "load_data",
    "parse_spec",
    "read_idx",
]
