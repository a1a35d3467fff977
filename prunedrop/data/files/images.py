"""``imagefolder:DIR``, and the image decoding that ``hf:`` image columns share: images are decoded on access."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import PrunedropError, describe
from ...recipes import MAX_IMAGE_SIDE
from ...safety import not_a_folder
from .common import TEST_NAMES, VAL_NAMES, recipe_or_defaults

if TYPE_CHECKING:
    from ...recipes import Recipe

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
"""File name endings that ``imagefolder:`` reads as images (any case); other files are ignored."""


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_GRAY_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise PrunedropError("reading images needs Pillow: pip install 'prunedrop[images]'") from None
    return Image


@dataclass(frozen=True)
class ImageOptions:
    """How every image of a dataset becomes a tensor: resized to ``size`` (height, width), converted to ``mode``
    (``L`` = 1 channel, ``RGB`` = 3), scaled to [0, 1], then normalised with ``mean``/``std`` when given."""

    size: tuple[int, int]
    mode: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


class ImageDataset(Dataset):
    """Images decoded on access: item ``i`` is ``(tensor (C, H, W) float32, label)``.

    ``sources[i]`` is a file path or a zero-argument function returning the encoded bytes; ``names[i]`` is what
    an error message calls the image. ``targets`` and ``classes`` are there as in torchvision's ImageFolder,
    so that the labels are known without decoding anything.
    """

    def __init__(self, sources: Sequence[Path | Callable[[], bytes]], targets: Sequence[int],
                 options: ImageOptions, *, names: Sequence[str] | None = None,
                 classes: Sequence[str] | None = None) -> None:
        self.sources = list(sources)
        self.targets = list(targets)
        self.names = list(names) if names is not None else [str(s) for s in self.sources]
        self.classes = list(classes) if classes is not None else None
        self.options = options
        channels = 1 if options.mode == "L" else 3
        self._mean = None if options.mean is None else torch.tensor(options.mean).reshape(-1, 1, 1)
        self._std = None if options.std is None else torch.tensor(options.std).reshape(-1, 1, 1)
        self.shape = (channels, *options.size)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = decode_image(self.sources[index], self.names[index], self.options)
        if self._mean is not None:
            x = (x - self._mean) / self._std
        return x, self.targets[index]


def decode_image(source: Path | Callable[[], bytes], name: str, options: ImageOptions) -> torch.Tensor:
    """One image as a float32 (C, H, W) tensor in [0, 1] (8-bit values / 255, 16-bit / 65535, float images
    clipped); an unreadable image is a one-line error naming it."""
    image_module = _pil()
    height, width = options.size
    try:
        stream = source if isinstance(source, Path) else io.BytesIO(source())
        with image_module.open(stream) as img:
            # 16- and 32-bit grey images would saturate in an 8-bit conversion: read them as floats
            deep = img.mode.startswith("I") or img.mode == "F"
            scale = 65535.0 if img.mode.startswith("I") else 1.0 if deep else 255.0
            img = img.convert("F" if deep else options.mode)
            if img.size != (width, height):
                img = img.resize((width, height), image_module.Resampling.BILINEAR)
            array = np.array(img, dtype=np.float32)
    except PrunedropError:
        raise
    except Exception as e:  # Pillow raises many types for a damaged file (OSError, SyntaxError, ValueError, ...)
        raise PrunedropError(f"cannot read image {name} ({describe(e, 100)}); replace or remove the file") from None
    x = torch.from_numpy(array).div_(scale)
    if deep:
        x = x.clamp_(0.0, 1.0).unsqueeze(0)
        return x.expand(3, -1, -1).contiguous() if options.mode == "RGB" else x
    return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()


def image_header(source: Path | Callable[[], bytes], name: str) -> tuple[tuple[int, int], str]:
    """(width, height) and colour mode from the image's header, without decoding its pixels."""
    image_module = _pil()
    try:
        stream = source if isinstance(source, Path) else io.BytesIO(source())
        with image_module.open(stream) as img:
            return (int(img.size[0]), int(img.size[1])), str(img.mode)
    except PrunedropError:
        raise
    except Exception as e:
        raise PrunedropError(f"cannot read image {name} ({describe(e, 100)}); replace or remove the file") from None


def image_options(recipe: Recipe | None, headers: Callable[[], Iterable[tuple[str, tuple[int, int], str]]],
                  where: str) -> ImageOptions:
    """Resolve the recipe's image keys against the images; ``headers()`` yields (name, (w, h), mode) and is
    only called when the recipe leaves the size or the channels to be found from the images."""
    recipe = recipe_or_defaults(recipe)
    size: tuple[int, int] | None = None
    if recipe.image_size is not None:
        dims = recipe.image_size
        size = (dims[0], dims[0]) if len(dims) == 1 else (dims[0], dims[1])
    channels = recipe.image_channels
    if size is None or channels is None:
        sizes: dict[tuple[int, int], str] = {}
        colour = False
        count = 0
        for name, (w, h), mode in headers():
            count += 1
            if size is None and (w, h) not in sizes:
                sizes[(w, h)] = name
                if len(sizes) > 1:
                    (w0, h0), first = next(iter(sizes.items()))
                    raise PrunedropError(
                        f"{where} has images of different sizes ({first} is {w0}x{h0}, {name} is {w}x{h}); "
                        "set the recipe key image_size (e.g. image_size: [32, 32]) to resize them all"
                    )
            colour = colour or mode not in _GRAY_MODES
        if count == 0:
            raise PrunedropError(f"{where} has no images")
        if size is None:
            (w, h), name = next(iter(sizes.items()))
            if max(w, h) > MAX_IMAGE_SIDE:
                raise PrunedropError(
                    f"{where} has {w}x{h} images ({name}), more than {MAX_IMAGE_SIDE} pixels a side; set the "
                    "recipe key image_size to resize them"
                )
            size = (h, w)
        if channels is None:
            channels = 3 if colour else 1
    mean = std = None
    if recipe.normalize == "imagenet":
        if channels != 3:
            raise PrunedropError(
                f"normalize: imagenet needs RGB inputs, but {where} is read with 1 channel; set image_channels: 3 "
                "or give normalize: custom with normalize_mean/normalize_std"
            )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif recipe.normalize == "custom":
        mean, std = _per_channel(recipe.normalize_mean, "normalize_mean", channels), _per_channel(
            recipe.normalize_std, "normalize_std", channels)
    return ImageOptions(size=size, mode="L" if channels == 1 else "RGB", mean=mean, std=std)


def _per_channel(values: list[float] | None, key: str, channels: int) -> tuple[float, ...]:
    values = list(values or [])
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise PrunedropError(
            f"recipe key {key!r} has {len(values)} values but the images are read with {channels} channel(s); "
            "give one value per channel (or one for all)"
        )
    return tuple(values)


def load_imagefolder(directory: Path, recipe: Recipe | None = None) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """``imagefolder:DIR``: one sub-folder per class (labels are the sorted folder names' indices); with
    ``train/`` (and ``val/``, ``valid/`` or ``validation/``, and ``test/``) sub-folders, one such tree each."""
    directory = Path(directory).expanduser()
    why = not_a_folder(directory)
    if why:
        raise PrunedropError(f"image folder {str(directory)!r} {why}")
    subfolders = _subfolders(directory)
    roots: dict[str, Path | None] = {"train": directory, "val": None, "test": None}
    split_names = {"train", *VAL_NAMES, *TEST_NAMES}
    if "train" in subfolders:
        others = sorted(set(subfolders) - split_names)
        if others:
            raise PrunedropError(
                f"image folder {str(directory)!r} has train/ and also {others[0]}/; put every class folder under "
                "train/ (and val/, test/), or drop train/ and keep only class folders"
            )
        roots["train"] = directory / "train"
        vals = [n for n in VAL_NAMES if n in subfolders]
        if len(vals) > 1:
            raise PrunedropError(f"image folder {str(directory)!r} has both {vals[0]}/ and {vals[1]}/; keep one")
        roots["val"] = directory / vals[0] if vals else None
        roots["test"] = directory / "test" if "test" in subfolders else None
    elif subfolders and set(subfolders) <= split_names - {"train"}:
        found = sorted(subfolders)
        raise PrunedropError(
            f"image folder {str(directory)!r} has {found[0]}/ but no train/; add train/ with one folder per class"
        )
    train_files = _class_files(roots["train"])  # type: ignore[arg-type]
    classes = sorted(train_files)
    label_of = {name: i for i, name in enumerate(classes)}
    split_files: dict[str, dict[str, list[Path]]] = {"train": train_files}
    for split in ("val", "test"):
        root = roots[split]
        if root is None:
            continue
        files = _class_files(root)
        unknown = sorted(set(files) - set(classes))
        if unknown:
            raise PrunedropError(
                f"class folder {str(root / unknown[0])!r} has no counterpart in {str(roots['train'])!r}; every "
                f"{split} class must also be a training class"
            )
        split_files[split] = files

    def samples(files: dict[str, list[Path]]) -> tuple[list[Path], list[int]]:
        paths = [p for name in sorted(files) for p in files[name]]
        return paths, [label_of[name] for name in sorted(files) for _ in files[name]]

    all_paths = [p for files in split_files.values() for name in sorted(files) for p in files[name]]

    def headers() -> Iterable[tuple[str, tuple[int, int], str]]:
        for path in all_paths:
            size, mode = image_header(path, str(path))
            yield str(path), size, mode

    options = image_options(recipe, headers, f"image folder {str(directory)!r}")
    out: dict[str, Dataset | None] = {"train": None, "val": None, "test": None}
    for split, files in split_files.items():
        paths, labels = samples(files)
        out[split] = ImageDataset(paths, labels, options, classes=classes)
    return out["train"], out["val"], out["test"]  # type: ignore[return-value]


def _subfolders(directory: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise PrunedropError(f"cannot list folder {str(directory)!r} ({e.strerror or e})") from None


def _class_files(root: Path) -> dict[str, list[Path]]:
    """Class name -> its image files (searched recursively, sorted); an error for no or empty class folders."""
    classes = _subfolders(root)
    if not classes:
        raise PrunedropError(
            f"image folder {str(root)!r} has no class folders; put each class's images in a sub-folder named "
            "after the class (e.g. cat/001.png, dog/001.png)"
        )
    found: dict[str, list[Path]] = {}
    for name in classes:
        files: list[Path] = []
        for parent, dirs, names in os.walk(root / name):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(Path(parent) / n for n in sorted(names)
                         if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise PrunedropError(
                f"class folder {str(root / name)!r} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...); add "
                "images or remove the folder"
            )
        found[name] = files
    return found


