"""Data from files without a Python hook: the ``imagefolder:DIR``, ``csv:FILE`` and ``hf:PATH`` data specs.

:mod:`prunedrop.data.load` parses the spec and calls :func:`load_imagefolder`, :func:`load_csv` or :func:`load_hf`;
each returns ``(train, val, test)`` Datasets (``val``/``test`` None when the files have none), which
``load_data`` then checks, splits and limits like every other spec. The recipe's data keys
(``image_size``, ``image_channels``, ``normalize``, ``normalize_mean``/``normalize_std``, ``label_column``,
``loss``) say how the files are read.

Images are decoded on access, one at a time, so a folder of any size costs memory only for its file list;
their headers (size, colour mode) are read up front when the recipe leaves the size or the channels to be
found from the images. Tables (CSV, Hugging Face numeric columns) are read into one float32 tensor.

Pillow (``pip install 'prunedrop[images]'``) decodes images; ``hf:`` needs ``pip install 'prunedrop[hf]'``
(Hugging Face ``datasets``, which brings pyarrow). Nothing is downloaded: ``hf:`` reads local folders and files only.
"""

from .hf import load_hf
from .images import IMAGE_SUFFIXES, MAX_IMAGE_SIDE, ImageDataset, ImageOptions, load_imagefolder
from .tables import load_csv

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_SIDE", "ImageDataset", "ImageOptions", "load_csv", "load_hf", "load_imagefolder"]
