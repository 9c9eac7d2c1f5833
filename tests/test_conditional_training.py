"""Class-conditional training (issue 15): labels reach the networks, label dropout trains the
null label at the configured rate, labels travel through the batchers and the resume state, and
unconditional runs draw exactly what they drew before."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers import TINY_MLP
from sde_gen.app.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from sde_gen.app.config import load_config
from sde_gen.app.factory import build_model
from sde_gen.app.train import train
from sde_gen.data.batches import LABEL_SEED_OFFSET, ImageBatches, LabelDropout, ToyBatches
from sde_gen.data.images import ImageData
from sde_gen.data.toy2d import TOY2D_CLASSES, Toy2D
from sde_gen.errors import ConfigError, UserInputError
from sde_gen.hybrid_loss import hybrid_loss
from sde_gen.losses import dsm_loss
from sde_gen.nets import MLP, UNet
from sde_gen.parameterization import ScoreModel
from sde_gen.sde import VPSDE

torch.set_num_threads(1)
CPU = torch.device("cpu")
FAST = [*TINY_MLP, "train.log_every=2", "train.warmup=1"]
COND = FAST + ["model.class_cond=true"]


def _randomize_output(net: nn.Module) -> None:
    """Networks start with a zero output layer (eps = 0 whatever the label); give it weights."""
    g = torch.Generator().manual_seed(7)
    for p in net.parameters():
        if p.abs().sum() == 0:
            p.data = 0.3 * torch.randn(p.shape, generator=g)


def _mlp_model(num_classes=None) -> ScoreModel:
    torch.manual_seed(0)
    net = MLP(2, width=16, depth=1, emb_dim=16, num_classes=num_classes)
    _randomize_output(net)
    return ScoreModel(net, VPSDE(), prediction="eps")


# ------------------------------------------------------------------------------ label dropout
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_label_dropout_rate_is_within_a_binomial_bound(p):
    n, k = 20000, 8
    y = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(1))
    out = LabelDropout(k, p, device=CPU, seed=3)(y)
    dropped = out == k
    # The count is Binomial(n, p): 5 standard deviations (a false alarm about once in 1.7e6).
    assert abs(int(dropped.sum()) - n * p) < 5 * math.sqrt(n * p * (1 - p))
    assert torch.equal(out[~dropped], y[~dropped])  # kept labels are unchanged


def test_label_dropout_zero_keeps_every_label_and_bad_rates_are_refused():
    y = torch.arange(8).repeat(10)
    assert torch.equal(LabelDropout(8, 0.0, device=CPU, seed=0)(y), y)
    for bad in (1.0, -0.1):
        with pytest.raises(UserInputError, match="label dropout"):
            LabelDropout(8, bad, device=CPU, seed=0)


def test_config_label_dropout_default_and_checks():
    cfg = load_config(None, ["model.class_cond=true"])
    assert cfg.train.label_dropout == 0.1
    with pytest.raises(ConfigError, match="train.label_dropout"):
        load_config(None, ["model.class_cond=true", "train.label_dropout=1.0"])
    with pytest.raises(ConfigError, match="class_cond"):  # unused without class conditioning
        load_config(None, ["train.label_dropout=0.2"])
    with pytest.raises(ConfigError, match="labelled data"):
        load_config(None, ["model.class_cond=true", "data.name=moons"])


# ------------------------------------------------------------------------------ labels in data
@pytest.mark.parametrize("name", ["8gaussians", "25gaussians", "pinwheel"])
def test_toy_labels_are_components_and_leave_the_draws_unchanged(name):
    data = Toy2D(name)
    assert data.num_classes == TOY2D_CLASSES[name]
    x_plain = data.sample(500, generator=torch.Generator().manual_seed(4))
    x, y = data.sample(500, generator=torch.Generator().manual_seed(4), return_labels=True)
    assert torch.equal(x, x_plain) and y.dtype == torch.int64
    assert set(y.tolist()) <= set(range(data.num_classes)) and len(set(y.tolist())) > 1
    if data.mixture is not None:  # each point is near the mean of its own component
        nearest = torch.cdist(x.double(), data.mixture.means).argmin(1)
        assert (nearest == y).float().mean() > 0.99
    else:  # the pinwheel's arm k starts at angle 2 pi k / 5
        angle = torch.atan2(x[:, 1], x[:, 0]) % (2 * math.pi)
        start = 2 * math.pi * y / 5
        assert (((angle - start) % (2 * math.pi)) < 2.5).float().mean() > 0.95


def test_unlabelled_toy_data_refuses_labels():
    with pytest.raises(UserInputError, match="no class labels"):
        Toy2D("moons").sample(4, return_labels=True)


def test_toy_batches_conditional_and_unconditional_share_the_data_stream():
    data = Toy2D("8gaussians")
    plain = ToyBatches(data, batch_size=64, device=CPU, seed=5)
    cond = ToyBatches(data, batch_size=64, device=CPU, seed=5, num_classes=8, label_dropout=0.5)
    ref = torch.Generator().manual_seed(5)
    for _ in range(3):
        x = plain.next()
        assert torch.is_tensor(x) and torch.equal(x, data.sample(64, generator=ref))
        xc, y = cond.next()
        assert torch.equal(xc, x) and y.shape == (64,) and (y == 8).any() and (y < 8).any()
    assert set(plain.state_dict()) == {"generator"}  # the unconditional state as before
    assert set(cond.state_dict()) == {"generator", "label_dropout"}


def test_batcher_state_resumes_the_labels_exactly():
    data = Toy2D("25gaussians")
    a = ToyBatches(data, batch_size=16, device=CPU, seed=9, num_classes=25, label_dropout=0.3)
    a.next()
    state = a.state_dict()
    want = [a.next() for _ in range(3)]
    b = ToyBatches(data, batch_size=16, device=CPU, seed=1, num_classes=25, label_dropout=0.3)
    b.load_state_dict(state)
    for (x, y), (xb, yb) in zip(want, [b.next() for _ in range(3)]):
        assert torch.equal(x, xb) and torch.equal(y, yb)
    with pytest.raises(UserInputError, match="label-dropout"):
        b.load_state_dict({"generator": state["generator"]})


def test_image_batches_give_labels_with_dropout():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.arange(40) % 4
    data = ImageData(x, y, 4, "npz")
    batches = ImageBatches(data, batch_size=20, device=CPU, seed=2, flip=False,
                           channels_last=False, num_classes=4, label_dropout=0.5)
    xb, yb = batches.next()
    kept = yb < 4
    assert xb.shape == (20, 1, 4, 4) and kept.any() and (~kept).any()
    # Each kept label is that of its image (the pixels identify the image).
    pix = torch.round((xb + 1) * 127.5).to(torch.uint8)
    idx = [int(torch.nonzero((x == p).flatten(1).all(1))[0]) for p in pix]
    assert torch.equal(yb[kept], y[idx][kept])
    plain = ImageBatches(data, batch_size=20, device=CPU, seed=2, flip=False, channels_last=False)
    assert torch.is_tensor(plain.next())
    with pytest.raises(UserInputError, match="labelled"):
        ImageBatches(ImageData(x, None, None, "npz"), batch_size=20, device=CPU, seed=2,
                     flip=False, channels_last=False, num_classes=4)


# ------------------------------------------------------------------------------ labels in nets
@pytest.mark.parametrize("make", [
    lambda: _mlp_model(5),
    lambda: ScoreModel(UNet(1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                            resolution=8, dropout=0.0, num_classes=5), VPSDE(), prediction="eps"),
])
def test_labels_reach_the_network_and_none_is_the_null_label(make):
    torch.manual_seed(0)
    model = make()
    _randomize_output(model.net)
    assert model.num_classes == 5
    shape = (4, 2) if isinstance(model.net, MLP) else (4, 1, 8, 8)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    t = torch.full((4,), 0.3)
    with torch.no_grad():
        e0 = model(x, t, torch.zeros(4, dtype=torch.long))
        e1 = model(x, t, torch.ones(4, dtype=torch.long))
        null = model(x, t, torch.full((4,), 5))
        assert (e0 - e1).abs().max() > 1e-3  # the output depends on the label
        assert torch.equal(model(x, t), null)  # y=None is the null label
        assert torch.equal(model(x, t, 1), e1)  # an int is broadcast
        # Per-example labels: row i follows its own label.
        mixed = model(x, t, torch.tensor([0, 1, 0, 1]))
        assert torch.allclose(mixed[0], e0[0], atol=1e-6)
        assert torch.allclose(mixed[1], e1[1], atol=1e-6)


def test_label_errors_are_one_line_user_errors():
    cond, plain = _mlp_model(5), _mlp_model(None)
    x, t = torch.zeros(3, 2), torch.full((3,), 0.5)
    assert cond.num_classes == 5 and plain.num_classes is None
    for bad, match in [(torch.tensor([0, 6, 1]), "outside"), (torch.tensor([-1, 0, 1]), "outside"),
                       (torch.tensor([0.0, 1.0, 2.0]), "integers"),
                       (torch.tensor([0, 1]), r"shape \(3,\)")]:
        with pytest.raises(UserInputError, match=match) as e:
            cond(x, t, bad)
        assert "\n" not in str(e.value)
    with pytest.raises(UserInputError, match="unconditional"):
        plain(x, t, torch.zeros(3, dtype=torch.long))


def test_unconditional_mlp_is_unchanged_by_the_new_argument():
    torch.manual_seed(3)
    a = MLP(2, width=16, depth=1, emb_dim=16)
    torch.manual_seed(3)
    b = MLP(2, width=16, depth=1, emb_dim=16, num_classes=4)
    # The label embedding is built last: every other weight starts as the unconditional one's.
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sb) - set(sa) == {"label_embed.weight"}
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_losses_pass_labels_only_when_given():
    sde, x0 = VPSDE(), torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    seen = []

    def model(x, t, *y):
        seen.append(y)
        return torch.zeros_like(x)

    a = dsm_loss(model, sde, x0, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8)
    b = dsm_loss(model, sde, x0, generator=torch.Generator().manual_seed(1), y=y)
    assert seen[0] == () and torch.equal(seen[1][0], y)
    assert torch.equal(a, b)  # the labels change no random draw
    dsm_loss(model, sde, x0, generator=torch.Generator().manual_seed(1), y=y, shard=slice(2, 5))
    assert torch.equal(seen[2][0], y[2:5])

    cond = ScoreModel(MLP(2, width=16, depth=1, emb_dim=16, out_dim=4, num_classes=8), sde,
                      learn_variance=True)
    out = hybrid_loss(cond, sde, x0, generator=torch.Generator().manual_seed(2), y=y)
    assert out.loss.shape == (8,) and torch.isfinite(out.loss).all()


def test_factory_builds_conditional_models_from_the_data():
    for name, k in TOY2D_CLASSES.items():
        model = build_model(load_config(None, ["model.class_cond=true", f"data.name={name}"]))
        assert model.num_classes == k and model.net.label_embed.num_embeddings == k + 1
    assert build_model(load_config(None, [])).num_classes is None


def test_unlabelled_images_refuse_class_conditioning(tmp_path):
    path = tmp_path / "u.npz"
    np.savez(path, x_train=np.zeros((4, 8, 8), np.uint8))
    cfg = load_config(None, ["model.class_cond=true", "data.name=npz", f"data.path={path}",
                             "model.name=unet", "model.ch=8", "model.ch_mult=[1, 2]",
                             "model.attn_resolutions=[]", "model.num_res_blocks=1"])
    with pytest.raises(UserInputError, match="needs labelled data"):
        build_model(cfg)


# ------------------------------------------------------------------------------ training
def test_conditional_resume_is_bitwise_identical(tmp_path):
    full = load_config(None, COND + ["train.steps=12", "train.ckpt_every=6", "train.keep=10",
                                     "train.label_dropout=0.3"])
    train(full, tmp_path / "full", progress=False)
    train(full, tmp_path / "cut", progress=False)  # the same command, killed after step 6
    checkpoint_path(tmp_path / "cut", 12).unlink()
    res = train(full, tmp_path / "cut", progress=False)
    assert res.step == 12
    a = load_checkpoint(list_checkpoints(tmp_path / "full")[-1])
    b = load_checkpoint(res.checkpoint)
    for entry in ("model", "ema"):
        assert all(torch.equal(a[entry][k], b[entry][k]) for k in a[entry]), entry
    assert "net.label_embed.weight" in a["model"]
    assert torch.equal(a["data"]["label_dropout"]["generator"],
                       b["data"]["label_dropout"]["generator"])


def test_labels_change_the_trained_weights_and_dropout_seed_is_separate(tmp_path):
    """A conditional run trains its label embedding (the null label too, by dropout), and the
    dropout generator's seed differs from the data's (else its draws would track the data's)."""
    train(load_config(None, COND + ["train.steps=4"]), tmp_path / "c", progress=False)
    state = load_checkpoint(list_checkpoints(tmp_path / "c")[-1])
    torch.manual_seed(0)
    init = build_model(load_config(None, COND)).net.label_embed.weight
    trained = state["model"]["net.label_embed.weight"]
    assert (trained - init).abs().max(1).values.gt(0).all()  # every label's row moved
    assert LABEL_SEED_OFFSET not in (0, 1)  # 0: the data's seed, 1: the noise's


def test_conditional_hybrid_and_pinwheel_train(tmp_path):
    extra = [["data.name=pinwheel"],
             ["model.learn_variance=true", "train.discrete=true", "train.weighting=simple",
              "train.time_sampling=uniform"]]
    for i, e in enumerate(extra):
        res = train(load_config(None, COND + ["train.steps=3"] + e), tmp_path / str(i),
                    progress=False)
        assert res.step == 3 and math.isfinite(res.loss)
