"""The CPU thread policy (issue 23): one function, used by ``train`` and applied by every command
that runs a trained model right after loading it, before the model is called; ``--threads N``
overrides it (0: the run's ``train.threads``; that 0 too: 1 for 2-D data, torch's default for
images)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import sde_gen.app.runs as runs
import sde_gen.app.threads as threads
from cli_runs import image_run, pictures, toy_run
from sde_gen.app.cli import app
from sde_gen.app.config import load_config
from sde_gen.app.threads import apply_thread_policy, thread_count
from sde_gen.app.train import train

TORCH_DEFAULT = 7  # what the policy takes for torch's default (the test process runs on 1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_run(tmp_path_factory.mktemp("toy") / "run")


@pytest.fixture(scope="module")
def img(tmp_path_factory):
    return image_run(tmp_path_factory.mktemp("img") / "run")


@pytest.fixture
def events(monkeypatch):
    """``("threads", n)`` for every torch.set_num_threads(n) (not applied) and ``"model"`` for
    the first call of a loaded run's model."""
    log: list = []
    monkeypatch.setattr(threads, "_torch_default", TORCH_DEFAULT)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: log.append(("threads", n)))
    load_run = runs.load_run

    def hooked(*args, **kwargs):
        run = load_run(*args, **kwargs)
        run.model.register_forward_pre_hook(
            lambda module, inputs: None if "model" in log else log.append("model"))
        return run

    monkeypatch.setattr(runs, "load_run", hooked)
    return log


def test_the_rule():
    toy, img = load_config(None, []), load_config(None, ["data.name=digits"])
    threads._torch_default = None
    default = threads.torch_default_threads()
    assert thread_count(toy) == 1 and thread_count(img) == default
    assert thread_count(toy, 3) == 3 and thread_count(img, 2) == 2
    pinned = load_config(None, ["train.threads=4"])
    assert thread_count(pinned) == 4 and thread_count(pinned, 2) == 2
    assert apply_thread_policy(toy, "meta") is None  # not the CPU: nothing is changed


def test_train_uses_the_policy(tmp_path, events):
    train(load_config(None, ["model.width=16", "model.depth=1", "train.steps=1",
                             "train.batch_size=8", "train.plot_samples=0", "train.device=cpu",
                             "train.calibrate_budget=0"]),
          tmp_path, progress=False)
    assert events[:1] == [("threads", 1)]


def _cases(tmp, toy, img):
    pics = pictures(tmp)
    cpu = ["--device", "cpu"]
    return {
        "sample": (["sample", "--ckpt", toy, "--solver", "ddim", "--steps", "2", "--n", "4",
                    "--no-progress", "--out", tmp / "s.png", *cpu], 1),
        "likelihood": (["likelihood", "--ckpt", toy, "--n", "4", "--rtol", "1e-2", "--atol",
                        "1e-2", "--no-progress", "--out", tmp / "l.json", *cpu], 1),
        "figures": (["figures", "--ckpt", toy, "--n", "8", "--out", tmp / "f", *cpu], 1),
        "optimize-grid": (["optimize-grid", "--ckpt", toy, "--solver", "ddim", "--nfe", "3",
                           "--search", "descent", "--n", "4", "--n-heldout", "4", "--evals", "2",
                           "--out", tmp / "g.json", *cpu], 1),
        "eval": (["eval", "--ckpt", img, "--n", "2", "--steps", "1", "--n-bpd", "0",
                  "--batch-size", "2", "--no-progress", "--out", tmp / "e.json", *cpu],
                 TORCH_DEFAULT),
        "inpaint": (["inpaint", "--ckpt", img, "--image", pics["image"], "--mask", pics["mask"],
                     "--steps", "2", "--out", tmp / "i.png", *cpu], TORCH_DEFAULT),
        "colorize": (["colorize", "--ckpt", img, "--image", pics["grey"], "--steps", "2",
                      "--out", tmp / "c.png", *cpu], TORCH_DEFAULT),
    }


@pytest.mark.parametrize("command", ["sample", "likelihood", "figures", "optimize-grid", "eval",
                                     "inpaint", "colorize"])
@pytest.mark.parametrize("flag", [None, "3"])
def test_every_command_applies_the_policy_before_the_model_runs(toy, img, tmp_path, events,
                                                                 monkeypatch, command, flag):
    monkeypatch.setattr("sde_gen.app.sample_quality.CACHE", tmp_path / "cache")
    args, default = _cases(tmp_path, toy, img)[command]
    extra = [] if flag is None else ["--threads", flag]
    res = CliRunner().invoke(app, [str(a) for a in [*args, *extra]])
    assert res.exit_code == 0, res.output
    want = default if flag is None else int(flag)
    assert events[:2] == [("threads", want), "model"], events


def test_the_run_setting_counts_when_threads_is_0(tmp_path, events):
    run = toy_run(tmp_path / "pinned", "train.threads=2")
    events.clear()
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(run), "--solver", "ddim", "--steps",
                                   "2", "--n", "2", "--no-progress", "--device", "cpu",
                                   "--out", str(tmp_path / "s.png"), "--threads", "0"])
    assert res.exit_code == 0, res.output
    assert events[:2] == [("threads", 2), "model"]
