"""Tests for ``sde_gen.data.images``: loaders (digits, npz, JPEG npz, folder, torchvision errors),
scaling and flips, and the determinism / exact resume of both batching paths.

References are the arrays written into temporary files here, PIL's own decoding, and
``uint8_to_model`` / ``torch.flip``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import user_error
from sde_gen.data.images import (
    IMAGE_SHAPES,
    DeviceBatches,
    ImageData,
    ImageDataset,
    load_images,
    make_loader,
    pixels_8bit,
)
from sde_gen.errors import UserInputError
from sde_gen.scaling import uint8_to_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def smooth_rgb(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Smooth uint8 images (N, H, W, 3) that JPEG encodes with small error."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    a = rng.uniform(40, 215, size=(n, 1, 1, 3))
    b = rng.uniform(-40, 40, size=(n, 1, 1, 3))
    return np.clip(a + b * (xx + yy)[None, :, :, None], 0, 255).astype(np.uint8)


def toy_data(n: int = 10, labelled: bool = True) -> ImageData:
    """Images whose pixel (c, h, w) of image i is distinct along w, and labels = index."""
    x = (torch.arange(n)[:, None, None, None] * 7 + torch.arange(4)[None, None, None, :] * 40
         + torch.arange(3)[None, None, :, None]) % 256
    x = x.expand(n, 2, 3, 4).to(torch.uint8).contiguous()
    return ImageData(x, torch.arange(n) if labelled else None, n if labelled else None, "toy")


# ------------------------------------------------------------------------------------ loaders
def test_digits_offline() -> None:
    from sklearn.datasets import load_digits

    train = load_images("digits")
    test = load_images("digits", split="test")
    assert train.x.shape == (1500, *IMAGE_SHAPES["digits"]) and train.x.dtype == torch.uint8
    assert len(test) == 1797 - 1500 and test.shape == (1, 8, 8)
    assert int(train.x.min()) == 0 and int(train.x.max()) == 255
    assert train.num_classes == 10 and torch.equal(train.y.unique(), torch.arange(10))
    ref = load_digits()
    expect = np.rint(ref.images[1500:] * 255 / 16).astype(np.uint8)
    assert np.array_equal(test.x[:, 0].numpy(), expect)
    assert np.array_equal(test.y.numpy(), ref.target[1500:])


@pytest.mark.parametrize("layout", ["hw", "hwc", "chw"])
def test_npz_layouts_both_splits(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    shape = {"hw": (5, 4), "hwc": (5, 4, 3), "chw": (3, 5, 4)}[layout]
    arrays = {
        "x_train": rng.integers(0, 256, size=(6, *shape), dtype=np.uint8),
        "y_train": np.array([0, 1, 2, 3, 4, 1], dtype=np.uint8),
        "x_test": rng.integers(0, 256, size=(3, *shape), dtype=np.uint8),
        "y_test": np.array([2, 0, 1], dtype=np.uint8),
    }
    np.savez(tmp_path / "d.npz", **arrays)
    for split in ("train", "test"):
        data = load_images("npz", split=split, path=tmp_path / "d.npz")
        x = arrays[f"x_{split}"]
        expect = {"hw": lambda: x[:, None], "hwc": lambda: x.transpose(0, 3, 1, 2),
                  "chw": lambda: x}[layout]()
        assert data.x.dtype == torch.uint8 and np.array_equal(data.x.numpy(), expect)
        assert data.y.dtype == torch.int64
        assert np.array_equal(data.y.numpy(), arrays[f"y_{split}"])
        assert data.num_classes == 5  # from both splits' labels, so equal across splits


def test_npz_channel_conversion_matches_pil(tmp_path: Path) -> None:
    x = np.random.default_rng(1).integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x_train=x)
    gray = load_images("npz", path=tmp_path / "c.npz", channels=1)
    expect = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in x])
    assert gray.y is None and np.array_equal(gray.x[:, 0].numpy(), expect)


def test_jpeg_npz_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    split_pixels, arrays = {}, {}
    for split, n in (("train", 5), ("test", 3)):
        pixels = smooth_rgb(rng, n, 32, 32)
        blobs = []
        for im in pixels:
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="JPEG", quality=90)
            blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        arrays[f"{split}_jpeg"] = np.concatenate(blobs)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        arrays[f"y_{split}"] = rng.integers(0, 10, size=n).astype(np.uint8)
        split_pixels[split] = (pixels, blobs)
    np.savez(tmp_path / "cifar10.npz", **arrays)
    for split in ("train", "test"):
        data = load_images("cifar10", split=split, path=tmp_path / "cifar10.npz")
        pixels, blobs = split_pixels[split]
        decoded = np.stack([np.asarray(Image.open(io.BytesIO(b.tobytes())).convert("RGB"))
                            for b in blobs])
        assert data.x.shape == (len(pixels), 3, 32, 32) and data.num_classes == 10
        assert np.array_equal(data.x.permute(0, 2, 3, 1).numpy(), decoded)
        # Lossy but close to the source pixels: tolerance 4/255 mean absolute error.
        assert np.abs(decoded.astype(int) - pixels.astype(int)).mean() < 4
        assert np.array_equal(data.y.numpy(), arrays[f"y_{split}"])
    with pytest.raises(ValueError, match="expected"):  # CIFAR-shaped file given as MNIST
        load_images("mnist", path=tmp_path / "cifar10.npz")


def _jpeg_npz(path: Path, n: int = 3) -> dict[str, np.ndarray]:
    """An npz of ``n`` 8x8 JPEGs as ``train_jpeg`` + ``train_offsets`` (int64); returns its
    arrays."""
    blobs = []
    for im in smooth_rgb(np.random.default_rng(4), n, 8, 8):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG")
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    arrays = {"train_jpeg": np.concatenate(blobs),
              "train_offsets": np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)}
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("field, change, message", [
    ("train_offsets", lambda a: a.astype(np.float64),
     "train_offsets must hold integer byte offsets"),
    ("train_offsets", lambda a: a[::-1].copy(), "train_offsets must increase strictly"),
    ("train_jpeg", lambda a: a.astype(np.float32), "train_jpeg must be a 1-D uint8 byte buffer"),
    ("train_jpeg", lambda a: np.zeros_like(a), "image 0 of train_jpeg cannot be decoded"),
])
def test_malformed_jpeg_npz_is_one_line_error_naming_file_and_field(
        tmp_path: Path, field: str, change, message: str) -> None:
    # Regression: float offsets gave "TypeError: slice indices must be integers" from the slice.
    arrays = _jpeg_npz(tmp_path / "ok.npz")
    assert load_images("npz", path=tmp_path / "ok.npz").x.shape == (3, 3, 8, 8)
    arrays[field] = change(arrays[field])
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserInputError) as info:
        load_images("npz", path=tmp_path / "bad.npz")
    text = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in text
    assert message in text and str(tmp_path / "bad.npz") in text


@pytest.mark.parametrize("content, message", [
    (b"PK\x03\x04 torn zip", "cannot read"),
    (b"not a zip at all", "is not an .npz archive: it is not a zip"),  # was "pickled data"
    (b"", "is not an .npz archive: the file is empty"),
    (None, "single .npy array"),
])
def test_unreadable_npz_is_one_line_error(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "d.npz"
    if content is None:
        with open(path, "wb") as f:
            np.save(f, np.zeros((2, 4, 4), dtype=np.uint8))
    else:
        path.write_bytes(content)
    with pytest.raises(UserInputError, match=message) as info:
        load_images("npz", path=path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_image_in_folder_is_one_line_error(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG but torn")
    with pytest.raises(UserInputError, match="cannot read image") as info:
        load_images("folder", path=tmp_path)
    assert str(tmp_path / "b.png") in str(info.value)


@pytest.mark.skipif(not (SHARED / "mnist.npz").is_file(), reason="no shared mnist.npz")
def test_shared_mnist_npz_test_split() -> None:
    data = load_images("mnist", split="test", path=SHARED / "mnist.npz")
    assert data.x.shape == (10000, 1, 28, 28) and data.x.dtype == torch.uint8
    counts = torch.bincount(data.y, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # canonical MNIST


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    files = {"dog/b.png": 1, "cat/z.png": 0, "cat/a.png": 0, "dog/deep/c.jpg": 1}
    written = {}
    for rel, _ in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        im = smooth_rgb(rng, 1, 6, 5)[0] if rel.endswith("jpg") else \
            rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
        Image.fromarray(im).save(tmp_path / rel)
        written[rel] = np.asarray(Image.open(tmp_path / rel).convert("RGB"))
    order = sorted(files)  # cat/a, cat/z, dog/b, dog/deep/c
    data = load_images("folder", path=tmp_path)
    assert data.x.shape == (4, 3, 6, 5) and data.num_classes == 2
    assert data.y.tolist() == [files[r] for r in order]
    for i, rel in enumerate(order):
        assert np.array_equal(data.x[i].permute(1, 2, 0).numpy(), written[rel])
    gray = load_images("folder", path=tmp_path, channels=1)
    expect = np.asarray(Image.open(tmp_path / order[0]).convert("L"))
    assert gray.x.shape == (4, 1, 6, 5) and np.array_equal(gray.x[0, 0].numpy(), expect)


def test_folder_unlabelled_and_unequal_sizes(tmp_path: Path) -> None:
    for name, size in (("a.png", (5, 6)), ("b.png", (5, 6))):
        Image.new("RGB", size, (10, 20, 30)).save(tmp_path / name)
    data = load_images("folder", path=tmp_path)
    assert data.y is None and data.num_classes is None and data.x.shape == (2, 3, 6, 5)
    Image.new("RGB", (7, 6), (0, 0, 0)).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="equal sizes"):
        load_images("folder", path=tmp_path)


def _png16(path: Path, a: np.ndarray) -> Path:
    """Write ``a`` (uint16, ``(H, W)`` grey or ``(H, W, 3)`` RGB) as a 16-bit PNG by hand (PIL
    cannot write 16-bit colour)."""
    import struct
    import zlib

    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", w, h, 16, 0 if a.ndim == 2 else 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                     chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_16bit_png_folder_keeps_the_high_byte(tmp_path: Path) -> None:
    """Issue 30.1: PIL's own conversion of mode I;16 made every non-zero pixel 255."""
    rng = np.random.default_rng(4)
    v = rng.integers(0, 256, size=(2, 6, 5), dtype=np.uint16)
    low = rng.integers(0, 256, size=v.shape, dtype=np.uint16)
    grey, rgb = tmp_path / "grey", tmp_path / "rgb"
    grey.mkdir(), rgb.mkdir()
    Image.fromarray(v[0] * 257).save(grey / "a.png")  # an 8-bit picture widened: v * 257
    _png16(grey / "b.png", v[1] * 256 + low[1])  # any low byte
    assert Image.open(grey / "a.png").mode == "I;16"
    for i in range(2):
        _png16(rgb / f"{i}.png", np.stack([v[i] * 256 + low[i]] * 3, -1))
    one = load_images("folder", path=grey, channels=1)
    assert np.array_equal(one.x[:, 0].numpy(), v.astype(np.uint8))
    three = load_images("folder", path=grey)
    assert np.array_equal(three.x.numpy(), np.repeat(v[:, None], 3, 1).astype(np.uint8))
    # The same picture as 16-bit colour (decoded by Pillow itself) gives the same pixels.
    assert torch.equal(load_images("folder", path=rgb).x, three.x)


def test_32bit_images_are_refused_naming_the_mode() -> None:
    img = Image.fromarray(np.zeros((4, 4), np.float32))
    assert "has the image mode F (32-bit samples)" in user_error(
        lambda: pixels_8bit(img, "pic.tif"))


def test_grey_palette_is_greyscale_and_colour_palette_rgb(tmp_path: Path) -> None:
    """Issue 30.19: a palette PNG of greys only is a greyscale picture, not RGB."""
    from sde_gen.app.editing import read_png

    rng = np.random.default_rng(5)
    levels = rng.integers(0, 256, size=(6, 5), dtype=np.uint8)
    Image.fromarray(levels).convert("P").save(tmp_path / "grey.png")
    colour = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    Image.fromarray(colour).quantize(16).save(tmp_path / "colour.png")
    assert Image.open(tmp_path / "grey.png").mode == "P"
    a = read_png(tmp_path / "grey.png")
    assert a.shape == (1, 6, 5) and np.array_equal(a[0], levels)
    assert read_png(tmp_path / "colour.png").shape == (3, 6, 5)
    with Image.open(tmp_path / "grey.png") as img:
        assert np.array_equal(pixels_8bit(img, "grey.png"), levels)


@pytest.mark.parametrize("name, kwargs", [
    ("npz", {"path": "missing.npz"}),
    ("mnist", {"path": "missing/mnist.npz"}),
    ("mnist", {}),
    ("cifar10", {}),
    ("folder", {"path": "no_such_folder"}),
])
def test_missing_data_is_one_line_file_not_found(tmp_path: Path, name: str, kwargs: dict) -> None:
    kwargs = {k: tmp_path / v for k, v in kwargs.items()}
    with pytest.raises(FileNotFoundError) as info:
        load_images(name, root=tmp_path / "cache", **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    if name in ("mnist", "cifar10") and not kwargs:
        assert "data.download=true" in message and f"{name}.npz" in message


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="digits, mnist, fashion_mnist, cifar10, npz, folder"):
        load_images("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_images("digits", split="val")
    with pytest.raises(ValueError, match="channels"):
        load_images("digits", channels=2)


# ---------------------------------------------------------------------- scaling and flipping
def test_dataset_scaling_and_flip() -> None:
    x = torch.zeros(2, 1, 2, 3, dtype=torch.uint8)
    x[0, 0, 0, 0], x[1, 0, 1, 2] = 255, 128
    data = ImageData(x, None, None, "toy")
    item, label = ImageDataset(data)[0]
    assert item.dtype == torch.float32 and label == -1
    assert float(item.min()) == -1.0 and float(item.max()) == 1.0
    assert torch.equal(item, uint8_to_model(x[0]))

    flipping = ImageDataset(data, flip=True, seed=0)
    plain, flipped = uint8_to_model(x[1]), torch.flip(uint8_to_model(x[1]), dims=(-1,))
    seen = [torch.equal(flipping[1][0], flipped) for _ in range(40)]
    for _ in range(40):
        out = flipping[1][0]
        assert torch.equal(out, plain) or torch.equal(out, flipped)
    assert 5 <= sum(seen) <= 35  # P(failure) < 1e-6 at p = 0.5


def _epochs(loader, n_epochs: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for _ in range(n_epochs) for x, y in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_is_deterministic_under_seed(num_workers: int) -> None:
    data = toy_data(24)
    def make(seed):
        return make_loader(data, batch_size=5, flip=True, seed=seed, num_workers=num_workers)

    a, b, c = _epochs(make(0)), _epochs(make(0)), _epochs(make(1))
    assert len(a) == 2 * (24 // 5) and a[0][0].shape == (5, 2, 3, 4)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert any(not torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))
    # Flips happened and only flips: each image is x_y or its mirror, both occur.
    flips = []
    for x, y in a:
        ref = uint8_to_model(data.x[y])
        flips += [bool(torch.equal(xi, r.flip(-1))) for xi, r in zip(x, ref)]
        assert all(torch.equal(xi, r) or torch.equal(xi, r.flip(-1)) for xi, r in zip(x, ref))
    assert 0 < sum(flips) < len(flips)
    # Epochs are reshuffled.
    assert not torch.equal(torch.cat([y for _, y in a[:4]]), torch.cat([y for _, y in a[4:]]))
    # Flips are redrawn every epoch (workers are reseeded from the loader's generator).
    fixed = _epochs(make_loader(data, batch_size=5, shuffle=False, flip=True,
                                num_workers=num_workers))
    assert torch.equal(fixed[0][1], fixed[4][1])  # same order, so only flips can differ
    first, second = torch.cat([x for x, _ in fixed[:4]]), torch.cat([x for x, _ in fixed[4:]])
    assert not torch.equal(first, second)


# ------------------------------------------------------------------------------ DeviceBatches
@pytest.mark.parametrize("device", DEVICES)
def test_device_batches_epochs_and_flip(device: str) -> None:
    data = toy_data(10)
    batches = DeviceBatches(data, batch_size=4, device=device, flip=True, seed=0)
    assert batches.batches_per_epoch == 2
    ys, flips = [], []
    for _ in range(6):  # three epochs of two full batches
        x, y = batches.next()
        assert x.device.type == device and x.dtype == torch.float32 and x.shape == (4, 2, 3, 4)
        ref = uint8_to_model(data.x[y.cpu()]).to(device)
        is_flip = (x == ref.flip(-1)).flatten(1).all(1)
        assert bool(((x == ref).flatten(1).all(1) | is_flip).all())
        flips += is_flip.tolist()
        ys.append(y.cpu())
    assert batches.epoch == 2 and 0 < sum(flips) < len(flips)
    for e in range(3):  # without replacement within an epoch
        assert len(set(torch.cat(ys[2 * e:2 * e + 2]).tolist())) == 8


@pytest.mark.parametrize("device", DEVICES)
def test_device_batches_determinism_and_resume(device: str) -> None:
    data = toy_data(10, labelled=False)
    a = DeviceBatches(data, batch_size=3, device=device, flip=True, seed=7)
    b = DeviceBatches(data, batch_size=3, device=device, flip=True, seed=7)
    c = DeviceBatches(data, batch_size=3, device=device, flip=True, seed=8)
    seq_a = [a.next()[0] for _ in range(4)]
    assert all(torch.equal(xa, b.next()[0]) for xa in seq_a)
    assert not all(torch.equal(xa, c.next()[0]) for xa in seq_a)
    assert bool((a.next()[1] == -1).all())

    state = a.state_dict()  # mid-epoch: position 6 of 9 in the second permutation
    buf = io.BytesIO()
    torch.save(state, buf)
    expect = [a.next() for _ in range(5)]  # crosses an epoch boundary
    resumed = DeviceBatches(data, batch_size=3, device=device, flip=True, seed=123)
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    got = [resumed.next() for _ in range(5)]
    assert all(torch.equal(xe, xg) for (xe, _), (xg, _) in zip(expect, got))
    assert resumed.epoch == a.epoch
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatches(data, batch_size=4, device=device).load_state_dict(state)
