"""WGAN-GP losses on critics whose input gradient is known in closed form."""

import torch
import torch.nn.functional as F

from fastpggan import losses


class LinearCritic(torch.nn.Module):
    """D(x) = <w, x> + c per sample, so grad_x D = w exactly; optional linear AC-GAN logits."""

    def __init__(self, shape, n_labels=0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64) * 0.1)
        self.c = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
        self.wl = torch.nn.Parameter(torch.randn(n_labels, *shape, dtype=torch.float64))

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1, keepdim=True) + self.c
        return torch.cat([s, torch.einsum("nchw,lchw->nl", x, self.wl)], 1)


def test_d_loss_on_linear_critic():
    D = LinearCritic((3, 4, 4))
    reals, fakes = torch.randn(6, 3, 4, 4, dtype=torch.float64), torch.randn(6, 3, 4, 4, dtype=torch.float64)
    loss = losses.d_loss_wgan_gp(D, reals, fakes, lambda_gp=10.0, drift=1e-3)
    sr, sf = D(reals)[:, 0], D(fakes)[:, 0]
    gp = (D.w.detach().norm() - 1) ** 2
    want = (sf - sr).mean() + 10.0 * gp + 1e-3 * (sr**2).mean()
    torch.testing.assert_close(loss, want.detach().to(loss.dtype), rtol=1e-10, atol=1e-10)


def test_d_loss_gp_gradient_reaches_critic_params():
    """d/dw of lambda*(||w|| - 1)^2 = 2*lambda*(||w|| - 1) * w/||w||: needs the double backward."""
    D = LinearCritic((2, 4, 4))
    reals = torch.zeros(4, 2, 4, 4, dtype=torch.float64)
    losses.d_loss_wgan_gp(D, reals, reals.clone(), lambda_gp=10.0, drift=0.0).backward()
    w = D.w.detach()
    torch.testing.assert_close(D.w.grad, 20.0 * (w.norm() - 1) * w / w.norm())


def test_d_loss_with_labels_and_target():
    D = LinearCritic((1, 4, 4), n_labels=3)
    reals, fakes = torch.randn(4, 1, 4, 4, dtype=torch.float64), torch.randn(4, 1, 4, 4, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 2])
    loss = losses.d_loss_wgan_gp(D, reals, fakes, labels=labels, target=2.0, lambda_gp=4.0, drift=0.0)
    out_r, out_f = D(reals).detach(), D(fakes).detach()
    ce = F.cross_entropy(out_r[:, 1:], labels, reduction="none") + F.cross_entropy(
        out_f[:, 1:], labels, reduction="none"
    )
    want = (out_f[:, 0] - out_r[:, 0] + 4.0 / 4.0 * (D.w.detach().norm() - 2.0) ** 2 + ce).mean()
    torch.testing.assert_close(loss, want.to(loss.dtype))


def test_g_loss():
    D = LinearCritic((3, 4, 4), n_labels=2)
    fakes = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(losses.g_loss_wgan(D, fakes), -D(fakes)[:, 0].mean().detach())
    labels = torch.tensor([1, 0, 1, 1, 0])
    out = D(fakes).detach()
    want = (-out[:, 0] + F.cross_entropy(out[:, 1:], labels, reduction="none")).mean()
    torch.testing.assert_close(losses.g_loss_wgan(D, fakes, labels=labels), want)


def test_interpolation_weights_are_per_sample():
    reals, fakes = torch.zeros(64, 1, 2, 2), torch.ones(64, 1, 2, 2)
    torch.manual_seed(0)
    u = torch.rand(64)
    x = losses.penalty_points(reals, fakes, u)
    assert torch.equal(x[:, 0, 0, 0], u) and x.flatten(1).std(1).max() == 0
    assert u.std() > 0.2
