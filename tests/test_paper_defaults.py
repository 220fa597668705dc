"""The constants the paper fixes, each pinned by its value and by behaviour, so none can drift silently.

AU threshold 0.01 (paper §4.1, after Burda et al. 2016); β = 0.2 for the β-VAE rows (§4); the ICNN of Eq. (6):
leaky-ReLU slope 0.2, squared first layer; the posterior mean of a mixture VAE weights each cluster by q(y|x).
"""
import pytest
import torch
import torch.nn.functional as F

from lidvae_mini.models.baselines import build_method
from lidvae_mini.models.icnn import ICNN
from lidvae_mini.evaluation.metrics import active_units
from lidvae_mini.models.mixture import build_mixture_vae
from lidvae_mini.models.vae import build_vae


def test_au_threshold_is_0_01_by_default():
    base = torch.linspace(-1.0, 1.0, 1001, dtype=torch.float64)
    unit = base / base.std()                                    # sample variance exactly 1
    means = torch.stack([unit * 0.0995 ** 0.5, unit * 0.1005 ** 0.5], 1) * 0.1 ** 0.5  # variances 0.00995, 0.01005
    au = active_units(means)
    assert au["threshold"] == 0.01
    assert au["variances"].tolist() == pytest.approx([0.00995, 0.01005], rel=1e-9)
    assert au["count"] == 1 and au["fraction"] == 0.5


def test_beta_vae_rows_use_beta_0_2():
    assert build_vae("beta_vae", 8, 2, seed=0).beta == 0.2
    assert build_vae("vae", 8, 2, seed=0).beta == 1.0 and build_vae("lidvae", 8, 2, seed=0).beta == 1.0
    assert build_mixture_vae("beta_gmvae", 8, 2, 2, seed=0).beta == 0.2
    assert build_mixture_vae("gmvae", 8, 2, 2, seed=0).beta == 1.0
    assert build_method("beta_vae", 8, 2, 2, seed=0).beta == 0.2


def test_icnn_default_is_eq6_with_slope_0_2_and_squared_first_layer():
    torch.manual_seed(0)
    icnn = ICNN(3, hidden=(5, 4)).double()
    assert icnn.negative_slope == 0.2 and icnn.activation == "leaky_relu"
    u = torch.randn(64, 3, dtype=torch.float64) * 3
    W1, w2 = icnn.positive_weights()
    lrelu = lambda s: torch.where(s > 0, s, 0.2 * s)             # noqa: E731  written out, not F.leaky_relu
    z0 = lrelu(icnn.A[0](u)) ** 2                                   # h_0 = LReLU_0.2(.)^2
    z1 = lrelu(z0 @ W1.T + icnn.A[1](u))                            # h_1 = LReLU_0.2
    psi = (z1 @ w2.T).squeeze(-1) + u @ icnn.a_out + icnn.b_out + 0.05 * (u ** 2).sum(-1)   # alpha = 0.1
    torch.testing.assert_close(icnn(u), psi)
    # the slope matters: another slope gives another potential on inputs with negative pre-activations
    other = F.leaky_relu(icnn.A[0](u), 0.1) ** 2
    assert not torch.allclose(other, z0)


def test_injective_decoders_use_the_paper_icnn():
    model = build_vae("lidvae", 8, 2, seed=0)
    icnns = [m for m in model.modules() if isinstance(m, ICNN)]
    assert len(icnns) == 2
    assert all(m.negative_slope == 0.2 and m.activation == "leaky_relu" for m in icnns)


@torch.no_grad()
def test_mixture_posterior_mean_weights_clusters_by_q_y_given_x():
    torch.manual_seed(0)
    model = build_mixture_vae("gmvae", 4, 2, 3, depth=1, encoder="realnvp", seed=0).double()
    for p in model.cluster_net.parameters():                        # make q(y|x) far from uniform and x-dependent
        p.mul_(8.0)
    x = torch.randn(50, 4, dtype=torch.float64)
    probs = model.cluster_probs(x)
    assert float((probs.max(1).values - probs.min(1).values).min()) > 0.05
    expected = torch.zeros(50, 2, dtype=torch.float64)
    for y in range(3):
        onehot = torch.zeros(50, 3, dtype=torch.float64)
        onehot[:, y] = 1.0
        expected += probs[:, y:y + 1] * model.encoder.mean(torch.cat([x, onehot], 1))
    torch.testing.assert_close(model.encode_mean(x), expected)
    uniform = sum(model.encoder.mean(torch.cat([x, torch.eye(3, dtype=x.dtype)[y].expand(50, 3)], 1))
                  for y in range(3)) / 3
    assert not torch.allclose(model.encode_mean(x), uniform, atol=1e-3)
