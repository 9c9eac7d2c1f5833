import pytest
import torch

from sde_gen.nets.unet import UNET_PRESETS, UNet


def _perturb(net: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialized output layers nonzero weights so outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        (UNET_PRESETS["tiny"], (2, 3, 8, 8)),
        (dict(UNET_PRESETS["mnist"], ch=16, groups=8), (2, 1, 28, 28)),
        (dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16,
              in_channels=3, dropout=0.0, num_heads=2), (3, 3, 16, 16)),
    ],
)
def test_shapes_dtype_and_time_dependence(kwargs, shape):
    torch.manual_seed(0)
    net = UNet(**kwargs).eval()  # no dropout noise in the comparisons
    assert all(torch.equal(p, torch.zeros_like(p)) for p in net.conv_out.parameters())
    x = torch.randn(shape)
    assert torch.equal(net(x, torch.rand(shape[0])), torch.zeros(shape))  # zero-init output
    _perturb(net)
    out1, out2 = net(x, torch.full((shape[0],), 0.1)), net(x, torch.full((shape[0],), 0.9))
    assert out1.shape == shape and out1.dtype == torch.float32
    assert (out1 - out2).abs().mean() > 1e-3  # the output depends on t
    out64 = net.double()(x.double(), torch.full((shape[0],), 0.1, dtype=torch.float64))
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out1, atol=1e-4, rtol=1e-4)


def test_class_conditioning_and_null_label():
    torch.manual_seed(0)
    net = UNet(**UNET_PRESETS["tiny"], num_classes=10)
    _perturb(net)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    a, b = net(x, t, torch.tensor([1, 1])), net(x, t, torch.tensor([2, 2]))
    assert (a - b).abs().mean() > 1e-4  # the label changes the output
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.tensor([10, 10])), atol=0, rtol=0)


def test_ddpm_cifar10_size():
    n = sum(p.numel() for p in UNet(**UNET_PRESETS["ddpm_cifar10"]).parameters())
    assert abs(n - 35.7e6) / 35.7e6 < 0.01, n  # DDPM's 35.7M; this implementation: 35,746,307


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    net = UNet(**UNET_PRESETS["tiny"]).eval()
    _perturb(net)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    ref = net(x, t)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_tiny_unet_overfits_one_batch():
    torch.manual_seed(0)
    net = UNet(**UNET_PRESETS["tiny"])
    g = torch.Generator().manual_seed(1)
    x, noise = torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 3, 8, 8, generator=g)
    t = torch.rand(8, generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    first = None
    for _ in range(300):
        loss = ((net(x, t) - noise) ** 2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, (first, loss.item())  # falls by >= 10x


@pytest.mark.parametrize("shape, msg", [((2, 1, 8, 8), "expects x of shape"),
                                        ((2, 3, 7, 7), "divisible by 2")])
def test_bad_input(shape, msg):
    with pytest.raises(ValueError, match=msg):
        UNet(**UNET_PRESETS["tiny"])(torch.randn(shape), torch.rand(shape[0]))


@pytest.mark.gpu
def test_bf16_channels_last_cuda_smoke():
    net = UNet(**UNET_PRESETS["tiny"]).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 8, 8, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x, torch.rand(4, device="cuda"))
    out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
