"""One-line messages for user-caused failures, each a regression test of a vague or wrong message
on the earlier code: empty datasets and batches larger than the data, corrupt image files, a
corrupt FD-classifier cache, re-exporting an export, and weights that do not fit their config."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, safe_open, save_file
from typer.testing import CliRunner

import sde_gen.app.runs as runs
import sde_gen.app.sample_quality as sq
from helpers import TINY_MLP, TINY_UNET, cli_sets, one_error_line
from sde_gen.app.checkpoint import list_checkpoints
from sde_gen.app.cli import app
from sde_gen.app.config import DataConfig, load_config
from sde_gen.app.export import export_safetensors
from sde_gen.app.runs import load_run
from sde_gen.app.train import train
from sde_gen.data.images import DeviceBatches, ImageData, load_images, make_loader
from sde_gen.errors import CheckpointError, UserInputError

FAST = [*TINY_MLP, "train.log_every=5", "train.warmup=2", "train.ckpt_every=5", "train.keep=10"]
UNET = [*TINY_UNET, "train.steps=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 5-step 2-D run."""
    d = tmp_path_factory.mktemp("run")
    train(load_config(None, FAST + ["train.steps=5"]), d, progress=False)
    return d


def _npz(path: Path, n: int, *, labelled: bool = False) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)}
    if labelled:
        arrays["y_train"] = np.arange(n, dtype=np.int64) % 2
    np.savez(path, **arrays)
    return path


# --------------------------------------------------------------------------- empty datasets
def test_empty_npz_is_rejected_when_loaded(tmp_path):
    # Regression: it loaded, and training stopped with "batch_size must be in [1, 0], got 64".
    path = _npz(tmp_path / "empty.npz", 0)
    with pytest.raises(UserInputError) as info:
        load_images("npz", path=path)
    assert str(info.value) == f"the dataset in {path} is empty: x_train holds 0 images"
    jpeg = tmp_path / "jpeg.npz"
    np.savez(jpeg, train_jpeg=np.zeros(0, np.uint8), train_offsets=np.zeros(1, np.int64))
    with pytest.raises(UserInputError, match=f"the dataset in {jpeg} is empty"):
        load_images("npz", path=jpeg)
    res = CliRunner().invoke(app, ["train", "--workdir", str(tmp_path / "w"), "--no-progress",
                                   *cli_sets(UNET + ["data.name=npz", f"data.path={path}"])])
    assert f"the dataset in {path} is empty" in one_error_line(res)


def test_empty_folder_says_empty(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(FileNotFoundError, match=f"image folder {tmp_path} is empty"):
        load_images("folder", path=tmp_path)


def test_batches_of_empty_data_name_the_source(tmp_path):
    empty = ImageData(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), None, None, "npz",
                      str(tmp_path / "d.npz"))
    for make in (lambda: DeviceBatches(empty, batch_size=4, device="cpu"),
                 lambda: make_loader(empty, batch_size=4)):
        with pytest.raises(UserInputError) as info:
            make()
        assert str(info.value) == f"dataset 'npz' from {tmp_path / 'd.npz'} is empty: it holds " \
                                  "no images"


def test_batch_larger_than_the_data_names_the_source(tmp_path):
    path = _npz(tmp_path / "ten.npz", 10)
    data = load_images("npz", path=path)
    with pytest.raises(UserInputError) as info:
        DeviceBatches(data, batch_size=64, device="cpu")
    assert str(info.value) == f"batch_size 64 is larger than the 10 examples of {path}"
    with pytest.raises(UserInputError, match=f"batch_size 64 is larger than the 10 examples of "
                                             f"{path}"):
        make_loader(data, batch_size=64)
    with pytest.raises(UserInputError, match="batch_size must be at least 1, got 0"):
        DeviceBatches(data, batch_size=0, device="cpu")
    res = CliRunner().invoke(app, ["train", "--workdir", str(tmp_path / "w"), "--no-progress",
                                   *cli_sets(UNET + ["data.name=npz", f"data.path={path}",
                                                  "train.batch_size=64"])])
    assert f"batch_size 64 is larger than the 10 examples of {path}" in one_error_line(res)


# ---------------------------------------------------------------------- corrupt image files
def _png_folder(root: Path, n: int = 3) -> list[Path]:
    rng = np.random.default_rng(1)
    files = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)).save(
            root / f"{i}.png")
        files.append(root / f"{i}.png")
    return files


def test_truncated_png_in_folder_names_the_file(tmp_path):
    files = _png_folder(tmp_path)
    whole = files[1].read_bytes()
    files[1].write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UserInputError) as info:
        load_images("folder", path=tmp_path)
    assert str(info.value) == f"cannot read image {files[1]}: image file is truncated"


def test_image_header_with_an_absurd_size_names_the_file(tmp_path):
    # Regression: a PNG header declaring 30000 x 30000 pixels gave PIL's DecompressionBombError
    # (not an OSError) with a traceback and no file name.
    files = _png_folder(tmp_path)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    files[2].write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with pytest.raises(UserInputError, match=f"cannot read image {files[2]}: Image size"):
        load_images("folder", path=tmp_path)
    npz = tmp_path / "j.npz"
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="JPEG")
    blob = buf.getvalue() + files[2].read_bytes()
    np.savez(npz, train_jpeg=np.frombuffer(blob, np.uint8),
             train_offsets=np.array([0, len(buf.getvalue()), len(blob)]))
    with pytest.raises(UserInputError, match="image 1 of train_jpeg cannot be decoded"):
        load_images("npz", path=npz)


# ------------------------------------------------------------------ FD-classifier cache
def _labelled(n: int = 20) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return ImageData(x, torch.arange(n) % 2, 2, "toy")


def _cache_file(data: ImageData, steps: int) -> Path:
    return sq.classifier_cache_path(data, steps)


@pytest.mark.parametrize("spoil, reason", [
    (lambda p: p.write_bytes(b"torn"), "unreadable ("),
    (lambda p: torch.save({"model": {"head.weight": torch.zeros(3, 128)}, "num_classes": 2}, p),
     "missing keys body.0.weight"),
    (lambda p: torch.save({"model": {}, "num_classes": 5}, p), "it has 5 classes, the data 2"),
])
def test_corrupt_classifier_cache_is_retrained(tmp_path, monkeypatch, capsys, spoil, reason):
    # Regression: a torn cache file failed every 'sde-gen eval' (after sampling) with
    # "cannot read checkpoint ...".
    monkeypatch.setattr(sq, "CACHE", tmp_path / "cache")
    data = _labelled()
    path = _cache_file(data, 3)
    path.parent.mkdir(parents=True)
    spoil(path)
    net = sq.load_or_train_classifier(data, steps=3)
    err = capsys.readouterr().err
    assert f"warning: cached classifier {path} is unreadable (" in err and reason in err
    assert err.strip().endswith("; retraining it") and len(err.strip().splitlines()) == 1
    fresh, _ = sq.train_classifier(data, steps=3)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                fresh.state_dict().values()))
    assert not list(path.parent.glob(".tmp_*"))  # written atomically, no temp file left
    again = sq.load_or_train_classifier(data, steps=3)  # the rewritten cache loads silently
    assert capsys.readouterr().err == ""
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                again.state_dict().values()))


def _weights(net) -> list[torch.Tensor]:
    return list(net.state_dict().values())


def test_classifier_cache_is_keyed_by_the_data_not_its_name_shape_and_size(tmp_path, monkeypatch):
    # Regression (issue 30.2): the key was (name, shape, size, steps), so 'eval --data other.npz'
    # after 'eval --data ok.npz' reused ok.npz's classifier, and another class count replaced it.
    monkeypatch.setattr(sq, "CACHE", tmp_path / "cache")
    first = _labelled()
    other = ImageData(255 - first.x, first.y, 2, "toy")  # same name, shape, size; other pixels
    three = ImageData(first.x, torch.arange(20) % 3, 3, "toy")  # same pixels, 3 classes
    relabelled = ImageData(first.x, 1 - first.y, 2, "toy")  # same pixels, other labels
    nets = {}
    for key, data in (("first", first), ("other", other), ("three", three),
                      ("relabelled", relabelled)):
        nets[key] = sq.load_or_train_classifier(data, steps=3)
        fresh, _ = sq.train_classifier(data, steps=3)
        assert all(torch.equal(a, b) for a, b in zip(_weights(nets[key]), _weights(fresh))), key
    assert len(list((tmp_path / "cache").glob("toy_1x8x8_20_3_*.pt"))) == 4
    trained = []
    monkeypatch.setattr(sq, "train_classifier", lambda *a, **k: trained.append(1))
    for key, data in (("first", first), ("other", other), ("three", three)):
        again = sq.load_or_train_classifier(data, steps=3)  # every one is still cached
        assert all(torch.equal(a, b) for a, b in zip(_weights(again), _weights(nets[key]))), key
    assert not trained


def test_classifier_cache_file_of_other_data_is_not_used(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sq, "CACHE", tmp_path / "cache")
    first, other = _labelled(), ImageData(255 - _labelled().x, _labelled().y, 2, "toy")
    sq.load_or_train_classifier(first, steps=3)
    sq.classifier_cache_path(first, 3).rename(sq.classifier_cache_path(other, 3))
    net = sq.load_or_train_classifier(other, steps=3)
    assert "it was trained on other data); retraining it" in capsys.readouterr().err
    fresh, _ = sq.train_classifier(other, steps=3)
    assert all(torch.equal(a, b) for a, b in zip(_weights(net), _weights(fresh)))


def test_eval_loads_the_classifier_before_sampling(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sq, "CACHE", tmp_path / "cache")
    npz = _npz(tmp_path / "d.npz", 20, labelled=True)
    cfg = SimpleNamespace(data=DataConfig(name="npz", path=str(npz)))
    data = load_images("npz", path=npz)
    path = _cache_file(data, 2)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"torn")

    def sampling(*args, **kwargs):
        raise RuntimeError("sampling started")

    monkeypatch.setattr(sq, "generate", sampling)
    with pytest.raises(RuntimeError, match="sampling started"):
        sq.evaluate_run(SimpleNamespace(cfg=cfg, model=None, sde=None, shape=(1, 8, 8)), n=4,
                        classifier_steps=2, progress=False)
    assert "retraining it" in capsys.readouterr().err  # the cache was checked first ...
    assert torch.load(path, weights_only=True)["num_classes"] == 2  # ... and rewritten


# ------------------------------------------------------------------------------------ export
def test_export_of_an_export(run_dir, tmp_path):
    # Regression: 'sde-gen export --ckpt model.safetensors' said it was not a checkpoint.
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    export_safetensors(run_dir, first)
    res = CliRunner().invoke(app, ["export", "--ckpt", str(first), "--out", str(second)])
    assert res.exit_code == 0, res.output
    a, b = load_file(str(first)), load_file(str(second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(first), "pt") as f, safe_open(str(second), "pt") as g:
        assert f.metadata() == g.metadata()
    assert load_run(second).cfg == load_run(run_dir).cfg

    res = CliRunner().invoke(app, ["export", "--ckpt", str(first), "--out", str(first)])
    assert one_error_line(res) == f"error: --out {first} is the input file {first}; choose " \
                                   "another output path"
    assert load_file(str(first)).keys() == a.keys()  # untouched


def test_foreign_safetensors_is_not_an_sde_gen_export(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    expected = f"{path} is not an sde-gen export (no sde-gen metadata)"
    for cmd in (["export", "--ckpt", str(path), "--out", str(tmp_path / "o.safetensors")],
                ["sample", "--ckpt", str(path), "--n", "4", "--no-progress"]):
        assert one_error_line(CliRunner().invoke(app, cmd)) == f"error: {expected}"


# ----------------------------------------------------------------- weights that do not fit
def test_weights_mismatch_lists_keys_and_shapes():
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Linear(4, 3))
    good = net.state_dict()
    assert runs.weights_mismatch(net, good) is None
    bad = dict(good, extra=torch.zeros(1))
    del bad["1.bias"]
    bad["0.weight"] = torch.zeros(8, 2)
    assert runs.weights_mismatch(net, bad) == (
        "missing keys 1.bias; unexpected keys extra; size mismatch for 0.weight: checkpoint (8, 2) "
        "vs model (4, 2)")


def test_weights_that_do_not_fit_are_one_line(run_dir, tmp_path):
    # Regression: the message was torch's first line, "Error(s) in loading state_dict for
    # ScoreModel:", with the actual problem on the lines the CLI drops.
    state = torch.load(list_checkpoints(run_dir)[-1], weights_only=True)
    state["config"]["model"]["width"] = 24
    ckpt = tmp_path / "checkpoints" / "ckpt_000000005.pt"
    ckpt.parent.mkdir()
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError) as info:
        load_run(ckpt)
    msg = str(info.value)
    assert msg.startswith(f"{ckpt} does not match its config's model: size mismatch for ")
    assert ": checkpoint (16, " in msg and "vs model (24, " in msg and "more)" in msg
    assert "\n" not in msg and "Error(s)" not in msg
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(ckpt), "--n", "4", "--no-progress"])
    assert "size mismatch for" in one_error_line(res)

    state = torch.load(list_checkpoints(run_dir)[-1], weights_only=True)
    name = sorted(state["ema"])[0]
    state["ema"]["bogus.weight"] = state["ema"].pop(name)
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError) as info:
        load_run(ckpt)
    assert str(info.value) == (f"{ckpt} does not match its config's model: missing keys {name}; "
                               "unexpected keys bogus.weight")
