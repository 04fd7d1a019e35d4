"""EMA against its closed form; the U-Net's shapes, channels, conditions and size errors."""
import pytest
import torch
from torch import nn

from dff.ema import EMA
from dff.nn import UNet


def test_ema_constant_decay_closed_form():
    """theta_k = d^k theta_0 + (1 - d) sum_i d^(k-i) w_i for updates with weights w_1..w_k."""
    net = nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.fill_(1.0), net.bias.fill_(-1.0)
    ema, d = EMA(net, decay=0.9, warmup=False), 0.9
    ws = [0.5, 2.0, -3.0, 4.0, 0.25]
    for w in ws:
        with torch.no_grad():
            net.weight.fill_(w), net.bias.fill_(2 * w)
        ema.update(net)
    k = len(ws)
    expect_w = d**k * 1.0 + (1 - d) * sum(d ** (k - i) * w for i, w in enumerate(ws, start=1))
    expect_b = d**k * -1.0 + (1 - d) * sum(d ** (k - i) * 2 * w for i, w in enumerate(ws, start=1))
    assert torch.allclose(ema.model.weight, torch.full((2, 3), expect_w))
    assert torch.allclose(ema.model.bias, torch.full((2,), expect_b))
    assert int(ema.num_updates) == k


def test_ema_warmup_follows_early_training():
    """With the warm-up d_n = min(decay, (1+n)/(10+n)) the first update keeps only 1/10 of the start."""
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.9999, warmup=True)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**7) == 0.9999
    with torch.no_grad():
        net.weight.fill_(1.0)
    theta = 0.0
    for n in range(100):
        ema.update(net)
        d_n = min(0.9999, (1 + n) / (10 + n))
        theta = d_n * theta + (1 - d_n) * 1.0
    assert ema.model.weight.item() == pytest.approx(theta, rel=1e-6)
    assert theta > 0.9  # a plain 0.9999 would still be at 1 - 0.9999**100 ~ 0.01


def test_ema_is_in_state_dict_and_restores():
    net = nn.Linear(2, 2)
    a = EMA(net, 0.5, warmup=False)
    with torch.no_grad():
        net.weight.add_(1.0)
    a.update(net)
    b = EMA(nn.Linear(2, 2), 0.5, warmup=False)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.model.weight, a.model.weight) and int(b.num_updates) == 1


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_unet_shapes(channels):
    net = UNet(channels, dim=8, dim_mults=(1, 2))
    x, t = torch.randn(2, channels, 16, 16), torch.tensor([0, 999])
    assert net(x, t).shape == (2, channels, 16, 16)


def test_unet_condition_and_out_channels():
    net = UNet(3, out_channels=2, cond_channels=1, dim=8, dim_mults=(1, 2, 2))
    y = net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.randn(2, 1, 8, 8))
    assert y.shape == (2, 2, 8, 8)
    with pytest.raises(ValueError, match=r"condition of shape \(B, 1, 8, 8\), got None"):
        net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))


def test_unet_time_matters():
    net = UNet(1, dim=8, dim_mults=(1, 2))
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([0])), net(x, torch.tensor([500])))


def test_unet_rejects_sizes_it_cannot_divide():
    net = UNet(3, dim=8, dim_mults=(1, 2, 4, 8))
    with pytest.raises(ValueError, match=r"image size 20x20 .* multiples of 8"):
        net(torch.randn(1, 3, 20, 20), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"expects x_t of shape \(B, 3, H, W\)"):
        net(torch.randn(1, 1, 16, 16), torch.tensor([0]))


# ---------------------------------------------------------------------- the ADM residual U-Net
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_adm_unet_shapes_condition_and_classes(channels):
    from dff.nn import ADMUNet

    net = ADMUNet(channels, channels, cond_channels=2, dim=16, dim_mults=(1, 2, 2), attention=True, num_classes=3)
    x, t = torch.randn(2, channels, 16, 8), torch.tensor([3, 900])
    out = net(x, t, torch.randn(2, 2, 16, 8), torch.tensor([0, 3]))  # label 3 = "no label"
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.randn(1, channels, 10, 8), t[:1], torch.randn(1, 2, 10, 8))


def test_adm_unet_starts_at_zero_and_then_depends_on_time_and_input():
    from dff.nn import ADMUNet

    torch.manual_seed(0)
    net = ADMUNet(1, 1, dim=16, dim_mults=(1, 2), attention=False)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(net(x, torch.tensor([1, 2])), torch.zeros_like(x))  # zero-initialised output conv
    for p in net.parameters():  # any trained state: perturb every weight
        p.data.add_(0.1 * torch.randn_like(p))
    a, b = net(x, torch.tensor([1, 1])), net(x, torch.tensor([900, 900]))
    assert not torch.allclose(a, b) and not torch.allclose(a, net(x.flip(-1), torch.tensor([1, 1])))


def test_backbone_option_builds_and_trains_the_adm_unet():
    from dff.module import DiffusionModule
    from dff.nn import ADMUNet

    torch.manual_seed(0)
    m = DiffusionModule(image_size=8, channels=1, backbone="adm", dim=16, dim_mults=(1, 2), timesteps=50)
    assert isinstance(m.net, ADMUNet) and isinstance(m.ema.model, ADMUNet)
    x0, t, eps = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([3, 15, 30, 45]), torch.randn(4, 1, 8, 8)
    opt = torch.optim.AdamW(m.net.parameters(), lr=1e-3)
    losses = []
    for step in range(30):
        loss = m.diffusion.loss(m.net, x0, t=t, eps=eps)
        loss.backward()
        # zero-initialised layers block gradients at first: step 0 reaches only the output conv, step 1 the
        # residual branches' last convs too; from step 2 on every weight gets a non-zero gradient
        blocked = [n for n, p in m.net.named_parameters() if not p.grad.abs().sum() > 0]
        assert (blocked != []) == (step < 2), (step, blocked[:3])
        opt.step(), opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    with pytest.raises(ValueError, match="unknown backbone 'vit'"):
        DiffusionModule(image_size=8, channels=1, backbone="vit")


def test_num_res_blocks_sets_the_adm_unets_depth_and_is_refused_for_convnext():
    from dff.module import DiffusionModule
    from dff.nn.adm import ResBlock

    def res_blocks(m):
        return sum(isinstance(b, ResBlock) for b in m.net.modules())

    kw = dict(image_size=8, channels=1, dim=16, dim_mults=(1, 2), attention=False, timesteps=50)
    # per level: n down + (n + 1) up, and the middle's 2: 2 levels -> 2 (2n + 1) + 2
    assert [res_blocks(DiffusionModule(**kw, num_res_blocks=n)) for n in (1, 2, 3)] == [8, 12, 16]
    one = DiffusionModule(**kw, num_res_blocks=1)
    x = torch.randn(2, 1, 8, 8)
    assert one.net(x, torch.tensor([1, 40])).shape == x.shape
    for n in (0, -1):
        with pytest.raises(ValueError, match=f"model.num_res_blocks={n}: expected at least 1"):
            DiffusionModule(**kw, num_res_blocks=n)
    with pytest.raises(ValueError, match="num_res_blocks=1.*convnext backbone"):
        DiffusionModule(**kw, backbone="convnext", num_res_blocks=1)
    assert res_blocks(DiffusionModule(**kw, backbone="convnext")) == 0  # the default 2 is accepted there


def test_an_export_with_one_block_per_level_loads_with_its_depth(tmp_path):
    from dff.module import DiffusionModule
    from dff.pretrained import load_pretrained, save_pretrained

    torch.manual_seed(0)
    m = DiffusionModule(image_size=8, channels=1, dim=16, dim_mults=(1, 2), attention=False, timesteps=50,
                        num_res_blocks=1)
    for p in m.ema.model.parameters():  # a trained state, so that equal outputs mean equal weights
        p.data.add_(0.1 * torch.randn_like(p))
    save_pretrained(m, tmp_path / "w")
    back = load_pretrained(tmp_path / "w")
    assert back.hparams.num_res_blocks == 1
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 40])
    torch.testing.assert_close(back.ema.model(x, t), m.ema.model(x, t))
