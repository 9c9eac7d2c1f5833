"""Nothing faked, nothing lost, nothing left behind (issue 13, items 3-5): each test is a
regression test of a defect seen on the earlier code, which exited 0 or failed after the work."""

import json
import os
import signal
import time

import pytest
import torch
from typer.testing import CliRunner

import sde_gen.app.train as train_mod
from helpers import TINY_MLP, cli_sets, one_error_line
from sde_gen.app.checkpoint import list_checkpoints
from sde_gen.app.cli import app
from sde_gen.app.config import load_config
from sde_gen.app.generate import check_memory, generate
from sde_gen.app.outputs import dumps_strict, write_samples
from sde_gen.app.train import NonFiniteLossError, train
from sde_gen.errors import UserInputError
from sde_gen.likelihood import log_likelihood
from sde_gen.sde import VPSDE

FAST = [*TINY_MLP, "train.log_every=1", "train.warmup=2", "train.ckpt_every=5", "train.keep=10"]


def _strict_loads(text: str):
    """json.loads that rejects NaN and Infinity, as strict JSON readers do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 10-step 2-D run."""
    d = tmp_path_factory.mktemp("run")
    train(load_config(None, FAST + ["train.steps=10"]), d, progress=False)
    return d


def _nan_loss_on(steps):
    """A dsm_loss that is NaN on the given 1-based calls and the real loss otherwise."""
    real, calls = train_mod.dsm_loss, []

    def loss(model, *args, **kwargs):
        calls.append(1)
        out = real(model, *args, **kwargs)
        return out * float("nan") if len(calls) in steps else out
    return loss


# ---------------------------------------------------------------- a run that trained nothing
def test_a_run_whose_every_step_was_skipped_fails(tmp_path, monkeypatch):
    # Regression: 3 non-finite steps (below train.max_nonfinite) printed "loss nan (3 non-finite
    # steps skipped)" and exited 0.
    monkeypatch.setattr(train_mod, "dsm_loss", _nan_loss_on(range(1, 100)))
    with pytest.raises(NonFiniteLossError, match="all 3 steps of this run .* nothing was trained"):
        train(load_config(None, FAST + ["train.steps=3"]), tmp_path, progress=False)
    monkeypatch.setattr(train_mod, "dsm_loss", _nan_loss_on(range(1, 100)))
    res = CliRunner().invoke(app, ["train", "--workdir", str(tmp_path / "cli"), "--no-progress",
                                   *cli_sets(FAST + ["train.steps=3"])])
    assert "nothing was trained" in one_error_line(res)


def test_a_run_with_some_skipped_steps_still_succeeds(tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "dsm_loss", _nan_loss_on({2}))
    res = train(load_config(None, FAST + ["train.steps=4"]), tmp_path, progress=False)
    assert res.skipped_steps == 1 and res.step == 4


# ------------------------------------------------------------------------------ strict JSON
def test_metrics_write_a_nonfinite_loss_as_null_with_a_note(tmp_path, monkeypatch):
    # Regression: metrics.jsonl held a bare NaN, which strict JSON readers reject.
    monkeypatch.setattr(train_mod, "dsm_loss", _nan_loss_on({2}))
    train(load_config(None, FAST + ["train.steps=3"]), tmp_path, progress=False)
    recs = [_strict_loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert recs[1]["loss"] is None and recs[1]["nonfinite"] == ["loss"]
    assert isinstance(recs[0]["loss"], float) and "nonfinite" not in recs[0]
    # Resuming reads the null back: a finished run reports its last loss (NaN here) and exits 0.
    res = train(load_config(None, FAST + ["train.steps=3"]), tmp_path, progress=False)
    assert res.already_done


def test_dumps_strict_replaces_every_nonfinite_number():
    text = dumps_strict({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")},
                         "e": 2})
    assert _strict_loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2,
                                   "nonfinite": ["a", "b[1]", "c.d"]}


# --------------------------------------------------------------------- nothing left behind
def test_temp_files_of_a_killed_write_are_removed_at_the_next_start(tmp_path, capsys):
    # Regression: a SIGKILL during a checkpoint write left .tmp_*.pt files that nothing removed.
    cfg = load_config(None, FAST + ["train.steps=5"])
    train(cfg, tmp_path, progress=False)
    leftovers = [tmp_path / "checkpoints" / ".tmp_k2j3.pt", tmp_path / ".tmp_samples.png",
                 tmp_path / "config.yaml.tmp"]
    for p in leftovers:
        p.write_bytes(b"\0" * 1000)
    keep = tmp_path / "checkpoints" / "notes.txt"  # not ours: left alone
    keep.write_text("mine")
    train(load_config(None, FAST + ["train.steps=6"]), tmp_path, progress=False)
    assert not any(p.exists() for p in leftovers) and keep.exists()
    assert "removed 3 temporary file(s)" in capsys.readouterr().err


def test_sigterm_during_the_final_plot_is_clean_and_resumable(tmp_path, monkeypatch):
    # Regression: SIGTERM while the final plot was drawn exited 143 with no message.
    drawn = []

    def slow_plot(self, *, keep_existing=False):
        drawn.append(keep_existing)
        if len(drawn) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted by the handler
            raise AssertionError("the signal did not interrupt the plot")
        return real_finish(self, keep_existing=keep_existing)

    real_finish = train_mod._Trainer.finish
    monkeypatch.setattr(train_mod._Trainer, "finish", slow_plot)
    sets = [s for s in FAST if not s.startswith("train.plot_samples")]
    sets += ["train.plot_samples=50", "train.steps=5"]
    res = CliRunner().invoke(app, ["train", "--workdir", str(tmp_path), "--no-progress",
                                   *cli_sets(sets)])
    assert res.exit_code == 0, res.output
    assert "interrupted while writing the final plot" in res.output
    assert "run the same command to write the plot" in res.output
    assert not (tmp_path / "samples.png").exists() and len(list_checkpoints(tmp_path)) == 1
    again = CliRunner().invoke(app, ["train", "--workdir", str(tmp_path), "--no-progress",
                                     *cli_sets(sets)])
    assert again.exit_code == 0 and "already trained" in again.output, again.output
    assert drawn == [False, True] and (tmp_path / "samples.png").is_file()
    assert not list(tmp_path.glob(".tmp_*"))


# --------------------------------------------------------- outputs checked before the work
def test_likelihood_out_is_checked_before_computing(run_dir, tmp_path, monkeypatch):
    # Regression: `likelihood --out x.png` (or a directory) computed everything, then failed.
    import sde_gen.app.likelihood_report as rep_mod

    def never(*a, **k):
        raise AssertionError("computed before the output path was checked")
    monkeypatch.setattr(rep_mod, "evaluate_likelihood", never)
    monkeypatch.setattr(rep_mod, "evaluate_vlb", never)
    (tmp_path / "adir.json").mkdir()
    (tmp_path / "afile").write_text("")
    for out, match in ((tmp_path / "x.png", "must be a .json path"),
                       (tmp_path / "adir.json", "is a directory"),
                       (tmp_path / "afile" / "r.json", "is a file, not a directory")):
        res = CliRunner().invoke(app, ["likelihood", "--ckpt", str(run_dir), "--n", "4",
                                       "--no-progress", "--out", str(out)])
        assert match in one_error_line(res)


def test_sample_out_that_is_a_directory_fails_before_sampling(run_dir, tmp_path, monkeypatch):
    # Regression: `sample --out DIR.png` sampled, failed, and left DIR.npz behind.
    import sde_gen.app.generate as gen_mod

    monkeypatch.setattr(gen_mod, "sample", lambda *a, **k: pytest.fail("sampled"))
    (tmp_path / "DIR.png").mkdir()
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(run_dir), "--n", "4",
                                   "--solver", "ddim", "--steps", "3", "--no-progress",
                                   "--out", str(tmp_path / "DIR.png")])
    assert "is a directory" in one_error_line(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR.png"]


def test_a_failed_picture_leaves_no_samples_file(run_dir, tmp_path, monkeypatch):
    import sde_gen.app.outputs as out_mod

    def broken(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(out_mod, "scatter_compare", broken)
    cfg = load_config(None, FAST)
    with pytest.raises(OSError):
        write_samples(torch.zeros(4, 2), cfg, tmp_path / "s.png", title="t")
    assert list(tmp_path.iterdir()) == []  # neither s.npz nor a temp file


def test_a_sample_request_larger_than_memory_is_refused_up_front(monkeypatch):
    # Regression: --n 1000000000000 started sampling, holding every batch in memory.
    with pytest.raises(UserInputError, match=r"1000000000000 samples of shape \(2,\) need about "
                                             r"24.0 TB .* at most 41666666 samples"):
        check_memory(10**12, (2,), available=10**9)
    check_memory(1000, (3, 32, 32), available=10**9)  # 37 MB: fine
    import sde_gen.app.generate as gen_mod

    monkeypatch.setattr(gen_mod, "sample", lambda *a, **k: pytest.fail("sampled"))
    with pytest.raises(UserInputError, match="of memory"):
        generate(lambda x, t: x, VPSDE(), 10**15, (2,), "ddim", progress=False)


# ------------------------------------------------------------------ non-finite results fail
def test_a_nonfinite_likelihood_exits_nonzero_and_writes_nothing(run_dir, tmp_path, monkeypatch):
    # Regression: `likelihood --method vlb` printed NaN and exited 0.
    import sde_gen.app.likelihood_report as rep_mod

    def nan_vlb(*a, **k):
        return {"vlb_nats": float("nan"), "vlb_stderr": float("nan"), "vlb_prior": 0.0,
                "vlb_diffusion": float("nan"), "vlb_decoder": 0.0, "vlb_nfe": 1,
                "vlb_seconds": 0.0}
    monkeypatch.setattr(rep_mod, "evaluate_vlb", nan_vlb)
    out = tmp_path / "l.json"
    res = CliRunner().invoke(app, ["likelihood", "--ckpt", str(run_dir), "--method", "vlb",
                                   "--n", "4", "--no-progress", "--out", str(out)])
    assert "vlb_nats=nan" in one_error_line(res) and not out.exists()


def test_log_likelihood_names_nonfinite_data():
    # Regression: NaN or inf in x gave torchdiffeq's bare AssertionError.
    sde = VPSDE()
    x = torch.zeros(4, 2)
    x[1, 0], x[3, 1] = float("nan"), float("inf")
    with pytest.raises(UserInputError, match="x has 2 NaN or infinite values in 2 of its 4 "
                                             "examples"):
        log_likelihood(lambda x, t: x, sde, x, trace="exact")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_sample_in_another_dtype_than_the_weights(run_dir, dtype):
    # Regression: dtype=float16/bfloat16 in sample() raised torch's raw dtype-mismatch error.
    from sde_gen.app.runs import load_run
    from sde_gen.sampling import sample

    run = load_run(run_dir)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    ref = sample(run.model, run.sde, None, "dpm", steps=6, x_T=x_T)
    res = sample(run.model, run.sde, (8, 2), "dpm", steps=6, dtype=dtype)  # the prior draw
    assert res.x.dtype == dtype
    res = sample(run.model, run.sde, None, "dpm", steps=6, x_T=x_T.to(dtype))
    assert res.x.dtype == dtype and torch.isfinite(res.x).all()
    tol = {torch.float16: 0.05, torch.bfloat16: 0.3, torch.float64: 1e-4}[dtype]
    assert (res.x.double() - ref.x.double()).abs().max() < tol


def test_resume_from_weights_that_do_not_fit_is_one_line(tmp_path):
    # Regression: torch's multi-line "Error(s) in loading state_dict for ScoreModel:" was cut to
    # its first line, which names nothing.
    from sde_gen.app.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    train(load_config(None, FAST + ["train.steps=5"]), tmp_path, progress=False)
    path = list_checkpoints(tmp_path)[-1]
    state = load_checkpoint(path)
    dropped = sorted(state["model"])[0]
    del state["model"][dropped]
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match=rf"does not match this config's model \(model: "
                                              rf"missing keys {dropped}"):
        train(load_config(None, FAST + ["train.steps=6"]), tmp_path, progress=False)
