"""Image datasets as 8-bit tensors, and two ways to batch them for training.

:func:`load_images` returns an :class:`ImageData` holding the whole split as a ``uint8`` tensor
``(N, C, H, W)``. Sources:

- ``digits``: scikit-learn's bundled 8x8 digits (offline). train = first 1500, test = the rest.
- ``mnist``, ``fashion_mnist``, ``cifar10``: torchvision under ``root`` (``~/.cache/sde_gen``),
  or a local ``.npz`` via ``path`` (also picked up as ``root/<name>.npz``).
- ``npz``: any ``.npz`` via ``path``, with keys ``x_<split>`` (``(N, H, W)``, ``(N, H, W, C)`` or
  ``(N, C, H, W)``, uint8) or ``<split>_jpeg`` + ``<split>_offsets`` (concatenated JPEG bytes),
  and optionally ``y_<split>``.
- ``folder``: PNG/JPEG files under ``path``; class subfolders give labels. A 16-bit PNG keeps
  the high byte of each sample (see :func:`pixels_8bit`).

Nothing touches the network unless ``download=True``. Pixels become model inputs only through
:func:`~sde_gen.scaling.uint8_to_model`, in :class:`ImageDataset` (host, ``DataLoader``) or
in :class:`DeviceBatches` (the whole split resident on the accelerator).

Refs: [Ho20] Sec. 3.3 and [Song21] Appendix D (data in [-1, 1], random horizontal flips).
"""

from __future__ import annotations

import io
import os
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import MissingDependencyError, UserInputError
from ..scaling import uint8_to_model
from ..tensor_utils import append_dims
from .registry import IMAGE_DATASETS, IMAGE_SHAPES

SPLITS = ("train", "test")
DEFAULT_ROOT = "~/.cache/sde_gen"
DIGITS_TRAIN = 1500
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ImageData:
    """One split of an image dataset, as 8-bit pixels.

    Args:
        x: pixels, uint8. Shapes: ``(N, C, H, W)``.
        y: integer labels, int64, or ``None`` for unlabelled data. Shapes: ``(N,)``.
        num_classes: number of classes (``None`` when unlabelled).
        name: the dataset name given to :func:`load_images`.
        source: where the pixels came from (the ``.npz`` file, the image folder, the torchvision
            root), for messages; ``None`` for built-in data.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    num_classes: int | None
    name: str
    source: str | None = None

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise UserInputError(f"x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if y is not None and (y.dtype != torch.int64 or y.shape != x.shape[:1]):
            raise UserInputError(f"y must be int64 ({len(x)},), got {y.dtype} {tuple(y.shape)}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape ``(C, H, W)``."""
        return tuple(self.x.shape[1:])

    @property
    def origin(self) -> str:
        """The source path if known, else the dataset's name (for messages)."""
        return self.source or f"dataset {self.name!r}"

    def empty_error(self) -> UserInputError:
        """The error for a split with no images, naming the dataset and its source."""
        where = f" from {self.source}" if self.source else ""
        return UserInputError(f"dataset {self.name!r}{where} is empty: it holds no images")


def load_images(
    name: str,
    *,
    split: str = "train",
    root: str | Path | None = None,
    path: str | Path | None = None,
    download: bool = False,
    channels: int | None = None,
) -> ImageData:
    """Load one split of an image dataset into memory as uint8 ``(N, C, H, W)``.

    Args:
        name: one of ``digits, mnist, fashion_mnist, cifar10, npz, folder``.
        split: ``"train"`` or ``"test"`` (``folder`` has no splits: point ``path`` at one).
        root: torchvision cache directory (default ``~/.cache/sde_gen``); a ``<name>.npz`` there
            is used before torchvision.
        path: a ``.npz`` file (``mnist``, ``fashion_mnist``, ``cifar10``, ``npz``) or an image
            folder (``folder``).
        download: let torchvision download missing data (the only network access).
        channels: 1 (grayscale, ITU-R 601-2 luma as in PIL) or 3 (RGB); ``None`` keeps the
            source's channels, except ``folder``, which defaults to 3.

    Returns:
        :class:`ImageData`. Shapes: ``x: (N, C, H, W)`` uint8, ``y: (N,)`` int64.

    Raises:
        FileNotFoundError: the data is missing; the one-line message says how to get it.
        UserInputError: (a ``ValueError``) unknown name or split, unreadable or malformed file
            (naming the file), a split with no images, images of unequal sizes.
        MissingDependencyError: (an ``ImportError``) ``digits`` without scikit-learn.
    """
    if name not in IMAGE_DATASETS:
        raise UserInputError(f"unknown image dataset {name!r}; choose one of "
                             f"{', '.join(IMAGE_DATASETS)}")
    if split not in SPLITS:
        raise UserInputError(f"split must be one of {SPLITS}, got {split!r}")
    if channels not in (None, 1, 3):
        raise UserInputError(f"channels must be 1, 3 or None, got {channels!r}")

    if name == "folder":
        if path is None:
            raise UserInputError("dataset 'folder' needs data.path=/path/to/images")
        root = Path(path).expanduser()
        x, y, num_classes = _load_folder(root, channels or 3)
        return ImageData(x, y, num_classes, name, str(root))
    if name == "digits":
        x, y = _load_digits(split)
        return ImageData(_to_channels(x, channels), y, 10, name)

    npz = None if path is None else Path(path).expanduser()
    if name == "npz":
        if npz is None:
            raise UserInputError("dataset 'npz' needs data.path=/path/to/file.npz")
    elif npz is None:
        cached = Path(root or DEFAULT_ROOT).expanduser() / f"{name}.npz"
        npz = cached if cached.is_file() else None
    if npz is not None:
        if npz.suffix != ".npz":
            raise UserInputError(f"data.path must be a .npz file for {name!r}, got {npz}")
        if not npz.is_file():
            raise FileNotFoundError(f"{npz} does not exist; set data.path to an existing .npz file")
        x, y, num_classes = _load_npz(npz, split)
        if name != "npz":
            if x.shape[1:] != IMAGE_SHAPES[name]:
                raise UserInputError(f"{npz} holds images of shape {tuple(x.shape[1:])}, "
                                     f"expected {IMAGE_SHAPES[name]} for {name}")
            num_classes = 10
        return ImageData(_to_channels(x, channels), y, num_classes, name, str(npz))

    cache = Path(root or DEFAULT_ROOT).expanduser()
    x, y = _load_torchvision(name, split, cache, download)
    return ImageData(_to_channels(x, channels), y, 10, name, str(cache))


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDependencyError("dataset 'digits' needs scikit-learn: pip install "
                                     "scikit-learn") from None
    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    y = bunch.target.astype(np.int64)
    part = slice(0, DIGITS_TRAIN) if split == "train" else slice(DIGITS_TRAIN, None)
    return torch.from_numpy(x[part].copy()), torch.from_numpy(y[part].copy())


def _load_torchvision(
    name: str, split: str, root: Path, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST,
           "cifar10": datasets.CIFAR10}[name]
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError as err:
        if download or "not found" not in str(err).lower():
            raise
        raise FileNotFoundError(
            f"{name} not found under {root}; pass data.download=true (needs internet) "
            f"or data.path=/path/to/{name}.npz"
        ) from None
    except OSError as err:  # offline, unreachable server, or an unwritable root
        if not download:
            raise
        raise UserInputError(f"cannot download {name} to {root}: {_first_line(err)}") from None
    x = torch.as_tensor(np.asarray(ds.data), dtype=torch.uint8)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # MNIST (N,H,W), CIFAR (N,H,W,C)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return x.contiguous(), y


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _read_npz(path: Path, names: tuple[str, ...]) -> tuple[set[str], dict[str, np.ndarray]]:
    """The archive's keys and those of its arrays named in ``names``; one-line errors for files
    that are not an ``.npz`` of plain arrays (torn zip, a pickle, object arrays)."""
    try:
        with path.open("rb") as raw:
            magic = raw.read(6)
        if magic[:4] != b"PK\x03\x04" and magic != b"\x93NUMPY":  # a zip (.npz) or an .npy
            what = "the file is empty" if not magic else "it is not a zip of NumPy arrays"
            raise UserInputError(f"{path} is not an .npz archive: {what} (np.savez writes one)")
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise UserInputError(f"{path} is a single .npy array, not an .npz archive")
        with f:
            keys = set(f.files)
            return keys, {k: f[k] for k in names if k in keys}
    except UserInputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserInputError(f"cannot read {path}: {_first_line(e)}") from None


def _load_npz(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    pixels, jpeg, offsets = f"x_{split}", f"{split}_jpeg", f"{split}_offsets"
    keys, arrays = _read_npz(path, (pixels, jpeg, offsets, "y_train", "y_test"))
    if pixels in arrays:
        x = _to_nchw(arrays[pixels], path)
        source = pixels
    elif jpeg in arrays and offsets in arrays:
        if arrays[offsets].ndim == 1 and len(arrays[offsets]) <= 1:  # no file boundaries at all
            raise UserInputError(f"the dataset in {path} is empty: {offsets} holds no images")
        x = _decode_jpegs(arrays[jpeg], arrays[offsets], path, split)
        source = jpeg
    else:
        raise UserInputError(f"{path} has no {pixels} or {jpeg}/{offsets} arrays "
                             f"(found: {', '.join(sorted(keys))})")
    if len(x) == 0:  # rejected here, before labels or batch sizes are looked at
        raise UserInputError(f"the dataset in {path} is empty: {source} holds 0 images")
    labels = {k: arrays[k] for k in ("y_train", "y_test") if k in arrays}
    y = labels.get(f"y_{split}")
    if y is None:
        return x, None, None
    if y.shape != (len(x),) or y.dtype.kind not in "iu" or (y.size and y.min() < 0):
        raise UserInputError(f"{path}: y_{split} must hold {len(x)} non-negative integer labels")
    num_classes = 1 + max(int(v.max()) for v in labels.values() if v.size)
    return x, torch.from_numpy(y.astype(np.int64)), num_classes


def _to_nchw(x: np.ndarray, path: Path) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise UserInputError(f"{path}: images must be uint8, got {x.dtype}")
    if x.ndim == 3:
        return torch.from_numpy(x[:, None].copy())
    if x.ndim == 4 and x.shape[-1] in (1, 3):  # (N, H, W, C)
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    if x.ndim == 4 and x.shape[1] in (1, 3):  # already (N, C, H, W)
        return torch.from_numpy(x.copy())
    raise UserInputError(f"{path}: expected images (N,H,W), (N,H,W,C) or (N,C,H,W) with C in "
                         f"(1, 3), got {x.shape}")


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What PIL raises for a corrupt or truncated image: ``OSError`` ("image file is truncated",
    ``UnidentifiedImageError``), ``SyntaxError`` ("broken PNG file"), ``ValueError``, and
    ``DecompressionBombError`` (a plain ``Exception``) for a header declaring an absurd size."""
    from PIL import Image

    return OSError, ValueError, SyntaxError, Image.DecompressionBombError


#: PIL modes with 16 bits per sample (greyscale PNGs of bit depth 16).
MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def pixels_8bit(img: Any, name: str | os.PathLike) -> np.ndarray:
    """The pixels of the PIL image ``img`` at 8 bits: ``(H, W)`` uint8 for greyscale modes and
    palettes whose colours are all grey, else ``(H, W, 3)`` RGB (an alpha band is dropped).

    A 16-bit greyscale PNG (PIL mode ``I;16``, or ``I`` from a PNG) keeps the high byte of each
    sample (``v >> 8``), as Pillow itself decodes 16-bit colour PNGs, so one picture saved as
    16-bit grey or 16-bit colour gives the same pixels (and an 8-bit picture widened to 16 bits,
    ``v * 257``, gives back exactly ``v``). PIL's own conversion would clip every sample above 255
    to white.

    Raises:
        UserInputError: a 32-bit integer or floating-point image, naming ``name`` and the mode.
    """
    mode = img.mode
    if mode in MODES_16BIT or (mode == "I" and img.format == "PNG"):
        a = np.asarray(img).astype(np.int64)
        return (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
    if mode in ("I", "F"):
        raise UserInputError(f"{name} has the image mode {mode} (32-bit samples); save it as an "
                             "8- or 16-bit greyscale or RGB PNG")
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(img.convert("L"))
    rgb = np.asarray(img.convert("RGB"))
    if mode in ("P", "PA") and is_grey(rgb):  # a palette of greys only
        return np.ascontiguousarray(rgb[..., 0])
    return rgb


def is_grey(rgb: np.ndarray) -> bool:
    """Whether the ``(H, W, 3)`` pixels ``rgb`` have equal R, G and B everywhere."""
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _rgb(a: np.ndarray) -> np.ndarray:
    """``(H, W)`` greyscale or ``(H, W, 3)`` pixels as ``(H, W, 3)``."""
    return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a


def _decode_jpegs(buf: np.ndarray, offsets: np.ndarray, path: Path, split: str) -> torch.Tensor:
    """Decode the JPEG files concatenated in ``<split>_jpeg``, file i in bytes
    ``offsets[i]:offsets[i + 1]``."""
    from PIL import Image

    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise UserInputError(f"{path}: {split}_jpeg must be a 1-D uint8 byte buffer, got "
                             f"{buf.dtype} of shape {buf.shape}")
    if offsets.dtype.kind not in "iu":
        raise UserInputError(f"{path}: {split}_offsets must hold integer byte offsets, got "
                             f"{offsets.dtype}")
    if offsets.ndim != 1 or len(offsets) < 2 or np.any(np.diff(offsets) <= 0) or \
            offsets[0] < 0 or offsets[-1] > len(buf):
        raise UserInputError(f"{path}: {split}_offsets must increase strictly within the byte "
                             f"buffer {split}_jpeg")
    images = []
    for i in range(len(offsets) - 1):
        name = f"image {i} of {path}'s {split}_jpeg"
        try:
            with Image.open(io.BytesIO(buf[int(offsets[i]):int(offsets[i + 1])].tobytes())) as img:
                images.append(pixels_8bit(img, name))
        except _decode_errors() as e:
            raise UserInputError(f"{path}: image {i} of {split}_jpeg cannot be decoded: "
                                 f"{_first_line(e)}") from None
    if len({a.shape[:2] for a in images}) != 1:
        raise UserInputError(f"{path}: JPEG images have unequal sizes")
    grey = all(a.ndim == 2 for a in images)  # one colour image makes the split RGB
    x = np.stack(images)[..., None] if grey else np.stack([_rgb(a) for a in images])
    return _to_nchw(x, path)


def _load_folder(root: Path, channels: int) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    from PIL import Image

    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; set data.path to a folder "
                                "of PNG/JPEG files")
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and
                    p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise FileNotFoundError(f"image folder {root} is empty: no PNG/JPEG images under it; set "
                                "data.path to a folder of images")
    depths = {len(p.relative_to(root).parts) > 1 for p in files}
    if depths == {True, False}:
        raise UserInputError(f"{root} has images both at its top level and in subfolders; "
                             "use only class subfolders or none")
    mode = "RGB" if channels == 3 else "L"
    images, first = [], None
    for p in files:
        try:
            with Image.open(p) as img:
                a = np.asarray(Image.fromarray(pixels_8bit(img, p)).convert(mode))
        except _decode_errors() as e:
            raise UserInputError(f"cannot read image {p}: {_first_line(e)}") from None
        if first is None:
            first = (p, a.shape)
        elif a.shape != first[1]:
            raise UserInputError(f"images must have equal sizes: {first[0]} is {first[1][:2]}, "
                                 f"{p} is {a.shape[:2]} (H, W); resize them first")
        images.append(a)
    x = _to_nchw(np.stack(images)[..., None] if mode == "L" else np.stack(images), root)
    if depths == {False}:
        return x, None, None
    classes = sorted({p.relative_to(root).parts[0] for p in files})
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[p.relative_to(root).parts[0]] for p in files], dtype=torch.int64)
    return x, y, len(classes)


def _to_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Convert uint8 ``(N, C, H, W)`` between 1 and 3 channels (luma as PIL's ``convert("L")``)."""
    if channels is None or channels == x.shape[1]:
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.repeat(1, 3, 1, 1)
    if channels == 1 and x.shape[1] == 3:
        rgb = x.to(torch.int32)
        # PIL's fixed-point ITU-R 601-2 luma: L = R*299/1000 + G*587/1000 + B*114/1000.
        luma = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
        return luma[:, None].to(torch.uint8)
    raise UserInputError(f"cannot convert {x.shape[1]} channels to {channels}")


class ImageDataset(Dataset):
    """Map-style dataset of model-range images: item ``i`` is ``(uint8_to_model(x_i), y_i)``.

    Args:
        data: the split to serve.
        flip: reverse the width axis of each image with probability 0.5.
        seed: seed of the dataset's own generator for flips; :func:`make_loader` reseeds it in
            every worker from the loader's generator.

    Shapes: item ``x: (C, H, W)`` float32 in [-1, 1]; ``y`` an int (-1 when unlabelled).
    """

    def __init__(self, data: ImageData, *, flip: bool = False, seed: int = 0) -> None:
        self.data = data
        self.flip = flip
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        """Reset the flip generator (called per worker by :func:`make_loader`)."""
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = uint8_to_model(self.data.x[i])
        if self.flip and bool(torch.rand((), generator=self.generator) < 0.5):
            x = torch.flip(x, dims=(-1,))
        return x, (-1 if self.data.y is None else int(self.data.y[i]))


def _seed_worker(worker_id: int) -> None:
    # info.seed = the loader generator's per-epoch base seed + worker_id, so flips (and any
    # NumPy / random use in user transforms) are reproducible for a given loader seed.
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed)
    np.random.seed(info.seed % 2**32)
    random.seed(info.seed)


def make_loader(
    data: ImageData,
    *,
    batch_size: int,
    shuffle: bool = True,
    flip: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = True,
    seed: int = 0,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A ``DataLoader`` over :class:`ImageDataset` whose order and flips depend only on ``seed``.

    Args:
        data: the split to serve.
        batch_size: images per batch.
        shuffle: reshuffle every epoch (ignored when ``sampler`` is given).
        flip: random horizontal flips.
        num_workers, pin_memory, drop_last: as in ``torch.utils.data.DataLoader``.
        seed: seeds the loader's ``torch.Generator`` (order, worker seeds) and the flips.
        sampler: e.g. a ``DistributedSampler``; it then owns the order.

    Returns:
        Batches ``(x, y)``. Shapes: ``x: (B, C, H, W)`` float32, ``y: (B,)`` int64.
    """
    if not isinstance(data, ImageData):
        raise UserInputError(f"data must be an ImageData, got {type(data).__name__}")
    if batch_size < 1 or num_workers < 0:
        raise UserInputError(f"need batch_size >= 1, num_workers >= 0; got {batch_size}, "
                             f"{num_workers}")
    if len(data) == 0:
        raise data.empty_error()
    if drop_last and sampler is None and batch_size > len(data):
        raise UserInputError(f"batch_size {batch_size} is larger than the {len(data)} examples "
                             f"of {data.origin} (with drop_last)")
    generator = torch.Generator().manual_seed(seed)
    # A flip seed drawn from the loader's generator keeps flips independent of the shuffle.
    flip_seed = int(torch.randint(0, 2**62, (), generator=generator))
    return DataLoader(
        ImageDataset(data, flip=flip, seed=flip_seed),
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
    )


class DeviceBatches:
    """Random batches drawn from a split held entirely in device memory.

    The fast path for data that fits on the accelerator (MNIST train is 47 MB and CIFAR-10
    train 154 MB as uint8): the pixels are copied to ``device`` once, and each step gathers,
    scales and flips there, with no host-to-device copy and no worker processes.

    Sampling is *without replacement*: every epoch is a fresh ``randperm`` from a generator on
    ``device``, cut into ``len(data) // batch_size`` full batches; the last ``len(data) %
    batch_size`` indices of each permutation are dropped (as ``drop_last=True``), a different
    random subset every epoch. :meth:`state_dict` holds the generator state, the current
    permutation and the position in it, so a resumed run draws bit-identical batches.

    Args:
        data: the split to serve.
        batch_size: images per batch, at most ``len(data)``.
        device: where the data, the generator and the batches live.
        flip: reverse the width axis of each image with probability 0.5.
        seed: seed of the device generator.

    Shapes: :meth:`next` returns ``x: (B, C, H, W)`` float32 in [-1, 1] and ``y: (B,)`` int64
    (-1 when unlabelled), both on ``device``.
    """

    def __init__(
        self,
        data: ImageData,
        *,
        batch_size: int,
        device: str | torch.device,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        if len(data) == 0:
            raise data.empty_error()
        if batch_size < 1:
            raise UserInputError(f"batch_size must be at least 1, got {batch_size}")
        if batch_size > len(data):
            raise UserInputError(f"batch_size {batch_size} is larger than the {len(data)} "
                                 f"examples of {data.origin}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.flip = flip
        self.x = data.x.to(self.device)
        self.y = (torch.full((len(data),), -1, dtype=torch.int64) if data.y is None else data.y)
        self.y = self.y.to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.epoch = 0
        self._perm = self._new_perm()
        self._pos = 0

    def _new_perm(self) -> torch.Tensor:
        return torch.randperm(len(self.x), generator=self.generator, device=self.device)

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per epoch (``len(data) // batch_size``)."""
        return len(self.x) // self.batch_size

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch ``(x, y)``; starts a new epoch when the permutation runs out."""
        if self._pos + self.batch_size > len(self._perm):
            self.epoch += 1
            self._perm, self._pos = self._new_perm(), 0
        idx = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        x = self.x[idx]
        x = x if x.is_floating_point() else uint8_to_model(x)  # float: latents, as they are
        if self.flip:
            mask = torch.rand(len(idx), generator=self.generator, device=self.device) < 0.5
            x = torch.where(append_dims(mask, x.ndim), x.flip(-1), x)
        return x, self.y[idx]

    __next__ = next

    def __iter__(self) -> DeviceBatches:
        return self

    def state_dict(self) -> dict[str, Any]:
        """Generator state, current permutation (on CPU) and position, for an exact resume."""
        return {"generator": self.generator.get_state(), "perm": self._perm.cpu(),
                "position": self._pos, "epoch": self.epoch, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the data and batch size must match the saved run."""
        if state["batch_size"] != self.batch_size or len(state["perm"]) != len(self.x):
            raise UserInputError(f"state is for batch_size {state['batch_size']} and "
                                 f"{len(state['perm'])} images, not {self.batch_size} and "
                                 f"{len(self.x)}")
        self.generator.set_state(state["generator"].cpu())  # set_state takes a CPU ByteTensor
        self._perm = state["perm"].to(self.device)
        self._pos = int(state["position"])
        self.epoch = int(state["epoch"])
