"""Per-example random streams: sample i of a run is a function of (seed, i) alone."""

from __future__ import annotations

import pytest
import torch

from helpers import EPS_SOLVERS, SDES, mixture, seeded, user_error
from sde_gen.noise import IndexedGenerator, block_size_for, check_seed, rand, randint, randn
from sde_gen.sampling import impute, sample
from sde_gen.sampling.smc import impute_smc

F64 = torch.float64


def _batched(draw, n: int, sizes: list[int]) -> torch.Tensor:
    """``draw(start, b)`` over consecutive batches of the given sizes, concatenated."""
    assert sum(sizes) == n
    out, start = [], 0
    for b in sizes:
        out.append(draw(start, b))
        start += b
    return torch.cat(out)


@pytest.mark.parametrize("block", [1, 4, 64])
def test_draws_do_not_depend_on_the_batch(block: int) -> None:
    def draw(start: int, b: int) -> torch.Tensor:
        g = IndexedGenerator(7, start, b, block=block)
        return torch.cat([g.randn((b, 3), dtype=F64), g.rand((b, 2), dtype=F64),
                          g.randint(5, (b, 1)).to(F64), g.randn((2 * b, 3)).reshape(b, 6)], 1)

    whole = draw(0, 37)
    for sizes in ([1] * 37, [5, 32], [16, 16, 5], [36, 1]):
        assert torch.equal(_batched(draw, 37, sizes), whole), sizes


def test_a_sampler_that_takes_a_torch_generator_is_drawn_per_example() -> None:
    data = mixture()

    def draw(start: int, b: int) -> torch.Tensor:
        return IndexedGenerator(9, start, b, block=8).draw(
            lambda m, g: data.sample(m, generator=g, dtype=F64))

    whole = draw(0, 21)
    assert whole.shape == (21, 2)
    assert torch.equal(_batched(draw, 21, [2, 19]), whole)
    assert torch.equal(draw(0, 30)[:21], whole)  # more examples: the first ones unchanged


def test_streams_differ_by_seed_and_index() -> None:
    a = IndexedGenerator(1, 0, 128).randn((128, 4))
    b = IndexedGenerator(2, 0, 128).randn((128, 4))
    assert not torch.equal(a, b)
    assert len({tuple(r.tolist()) for r in a}) == 128  # no two examples share a stream
    # the draws are standard normal (mean and variance over 512 numbers, 5 sigma)
    assert abs(float(a.mean())) < 5 / 512**0.5 and abs(float(a.var()) - 1) < 5 * (2 / 512)**0.5


def test_a_torch_generator_keeps_its_one_stream() -> None:
    g1, g2 = seeded(3), seeded(3)
    assert torch.equal(randn((4, 2), g1), torch.randn(4, 2, generator=g2))
    assert torch.equal(rand((4,), g1), torch.rand(4, generator=g2))
    assert torch.equal(randint(3, (4,), g1), torch.randint(0, 3, (4,), generator=g2))


def test_block_size_follows_the_example_size() -> None:
    assert block_size_for((2,)) == 64
    assert block_size_for((3, 32, 32)) == 16
    assert block_size_for((3, 256, 256)) == 1


def test_bad_seeds_and_shapes() -> None:
    assert "2**63 - 1" in user_error(lambda: check_seed(2**64))
    assert "2**63 - 1" in user_error(lambda: check_seed(-1))
    assert "integer" in user_error(lambda: check_seed(1.5))
    with pytest.raises(ValueError, match="draws"):
        IndexedGenerator(0, 0, 3).randn((4, 2))


@pytest.mark.parametrize("solver", [name for name, spec in EPS_SOLVERS.items()
                                    if spec.is_stochastic()] + ["ddim"])
def test_every_solver_gives_the_same_samples_in_any_batch(solver: str) -> None:
    sde = SDES["vp"]()
    model = mixture().eps_model(sde)
    opts = {"steps": 12, **({"eta": 1.0} if solver == "ddim" else {})}
    if solver == "sde":
        opts["method"] = "euler"  # torchsde: one Brownian path per block of examples
    if solver == "pc":
        opts["n_corrector"] = 0  # the Langevin step size is a batch average ([Song21] Alg. 4)

    def draw(start: int, b: int) -> torch.Tensor:
        g = IndexedGenerator(11, start, b)
        return sample(model, sde, (b, 2), solver, generator=g, dtype=F64, **opts).x

    whole = draw(0, 20)
    assert torch.allclose(_batched(draw, 20, [3, 17]), whole, atol=1e-12, rtol=0)
    assert torch.allclose(_batched(draw, 20, [8, 8, 4]), whole, atol=1e-12, rtol=0)


def test_imputation_and_smc_rows_do_not_depend_on_the_batch() -> None:
    sde = SDES["vp"]()
    model = mixture().eps_model(sde)
    x = mixture().sample(10, generator=seeded(0), dtype=F64)
    mask = torch.tensor([1.0, 0.0], dtype=F64)

    def replacement(start: int, b: int) -> torch.Tensor:
        return impute(model, sde, x[start:start + b], mask, solver="ancestral", steps=10,
                      generator=IndexedGenerator(5, start, b)).x

    def smc(start: int, b: int) -> torch.Tensor:
        return impute_smc(model, sde, x[start:start + b], mask, particles=8, steps=10,
                          generator=IndexedGenerator(5, start, b)).x

    for fn in (replacement, smc):
        whole = fn(0, 10)
        assert torch.allclose(_batched(fn, 10, [4, 6]), whole, atol=1e-12, rtol=0), fn.__name__


def test_likelihood_reports_do_not_depend_on_the_batch_or_n(tmp_path) -> None:
    """The likelihood's data draws, Hutchinson probes and VLB draws are per example: any
    --batch-size gives the same report (the ODE's to its tolerance: an adaptive solve steps for
    the whole batch), and more examples leave the first ones unchanged."""
    from sde_gen.app.config import load_config
    from sde_gen.app.likelihood_report import _examples, evaluate_likelihood, evaluate_vlb
    from sde_gen.app.runs import load_run
    from sde_gen.app.train import train

    sets = ["model.width=16", "model.depth=1", "model.emb_dim=16", "model.fourier_features=4",
            "train.batch_size=32", "train.plot_samples=0", "train.device=cpu", "train.steps=4",
            "sde.N=50", "train.calibrate_budget=0"]
    train(load_config(None, sets), tmp_path, progress=False)
    run = load_run(tmp_path)
    kw = dict(n=12, split="test", seed=3, progress=False)
    a = evaluate_likelihood(run, batch_size=12, trace="hutchinson", **kw)
    b = evaluate_likelihood(run, batch_size=5, trace="hutchinson", **kw)
    assert a["nll_nats"] == pytest.approx(b["nll_nats"], rel=1e-5)
    va = evaluate_vlb(run, batch_size=12, n_t=3, **kw)
    vb = evaluate_vlb(run, batch_size=5, n_t=3, **kw)
    assert va["vlb_nats"] == pytest.approx(vb["vlb_nats"], rel=1e-9, abs=1e-9)
    first = _examples(run, "test", 12, 3, dequantized=True)[1]
    more = _examples(run, "test", 30, 3, dequantized=True)[1]
    assert torch.equal(more[:12], first)
    assert not torch.equal(_examples(run, "train", 12, 3, dequantized=True)[1], first)
