"""The LIDGMVAE of the paper's Example 1 (Eq. 9; supplement Eq. 15): a fixed zero-one beta_1 makes y -> p(w|y)
injective, whatever training does; the learned-prior variant can merge clusters; clear errors where Example 1
cannot hold (more clusters than latent dimensions)."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lidvae_mini.models.decoders import InjectiveDecoder, MLPDecoder
from lidvae_mini.models.encoders import GaussianEncoder
from lidvae_mini.models.mixture import EXAMPLE1_GAMMA, PRIORS, MixtureVAE, build_mixture_vae, example1_beta
from lidvae_mini.models.train import fit

TINY = dict(encoder="gaussian", encoder_hidden=(8,), cluster_hidden=(8,), icnn_width=8, seed=0)


def _model(kind="lidgmvae", D=6, K=4, C=4, **kw):
    return build_mixture_vae(kind, D, K, C, "gaussian", 1, **{**TINY, **kw}).double()


def _data(n=120, D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(4, D, generator=g, dtype=torch.float64)
    return centres[torch.arange(n) % 4] + 0.3 * torch.randn(n, D, generator=g, dtype=torch.float64)


def test_example1_is_the_default_lidgmvae_and_the_gmvae_keeps_learned_priors():
    lid, gm = _model("lidgmvae"), _model("gmvae")
    assert lid.prior == "example1" and not lid.learn_prior and isinstance(lid.decoder, InjectiveDecoder)
    assert gm.prior == "learned" and gm.learn_prior and isinstance(gm.decoder, MLPDecoder)
    assert set(PRIORS) == {"example1", "learned"}


def test_gamma_is_the_stated_choice():
    """γ = 3 is a stated choice (lidvae_mini.models.mixture.EXAMPLE1_GAMMA; the paper leaves it open): the committed
    Example-1 results and the chapters' prose depend on it, so a change must be deliberate. Any two cluster means
    are then γ√2 = 4.24 prior standard deviations apart."""
    assert EXAMPLE1_GAMMA == 3.0
    model = _model(C=3, K=5)
    dist = torch.cdist(model.prior_means, model.prior_means)
    torch.testing.assert_close(dist[0, 1], torch.tensor(3.0 * 2 ** 0.5, dtype=dist.dtype))
    assert float(model.prior_gamma) == 3.0


def test_beta_1_is_a_fixed_zero_one_buffer_and_the_means_are_gamma_unit_vectors():
    model = _model(C=3, K=5)
    buffers, params = dict(model.named_buffers()), dict(model.named_parameters())
    assert {"beta_1", "prior_gamma", "prior_means", "prior_log_scales"} <= set(buffers)
    assert not {"beta_1", "prior_means", "prior_log_scales"} & set(params)
    expected = torch.zeros(3, 5, dtype=torch.float64)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 1.0                 # main diagonal ones, zeros elsewhere
    torch.testing.assert_close(model.beta_1, expected)
    assert float(model.prior_gamma) == EXAMPLE1_GAMMA
    torch.testing.assert_close(model.prior_means, EXAMPLE1_GAMMA * expected)       # gamma * beta_1^T onehot(y)
    torch.testing.assert_close(model.prior_log_scales, torch.zeros(3, 5, dtype=torch.float64))
    # beta_1^T onehot(y) = e_y, the y-th unit vector, for every y
    for y in range(3):
        torch.testing.assert_close(model.beta_1.T @ torch.eye(3, dtype=torch.float64)[y],
                                   torch.eye(5, dtype=torch.float64)[y])
    # state_dict round trip keeps the buffers; gamma and sigma are arguments
    other = _model(C=3, K=5, gamma=1.5, prior_scale=0.5)
    torch.testing.assert_close(other.prior_means, 1.5 * expected)
    torch.testing.assert_close(other.prior_log_scales.exp(), torch.full((3, 5), 0.5, dtype=torch.float64))
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.prior_means, model.prior_means)


@pytest.mark.parametrize("C,K", [(2, 2), (3, 4), (4, 4), (10, 16)])
def test_y_to_p_w_given_y_is_injective_for_every_pair(C, K):
    """Distinct clusters give distinct p(w|y), for every pair: KL > 0 (exactly gamma^2 / sigma^2 here), and the
    densities differ at each cluster's mean."""
    model = _model(D=max(K, 6), K=K, C=C)
    kl = model.prior_pairwise_kl()
    off = ~torch.eye(C, dtype=torch.bool)
    torch.testing.assert_close(kl[off], torch.full((C * (C - 1),), EXAMPLE1_GAMMA ** 2, dtype=torch.float64))
    assert (kl.diagonal() == 0).all()
    for a, b in itertools.permutations(range(C), 2):
        w = model.prior_means[a]
        assert model.log_prior_w(w, a) - model.log_prior_w(w, b) == pytest.approx(EXAMPLE1_GAMMA ** 2)   # |gamma (e_a - e_b)|^2 / 2


def test_training_leaves_the_example1_prior_unchanged_and_injective():
    model = _model()
    before = {k: v.clone() for k, v in model.named_buffers() if k in ("beta_1", "prior_means", "prior_log_scales")}
    x = _data()
    fit(model, x, None, epochs=3, batch_size=40, lr=3e-2, seed=0)
    for k, v in before.items():
        torch.testing.assert_close(getattr(model, k), v, rtol=0, atol=0)
    assert (model.prior_pairwise_kl() + torch.eye(4, dtype=torch.float64) > 0).all()


def test_the_learned_variant_can_merge_clusters_and_example1_cannot():
    """Two learned components that coincide make y non-identifiable (the model's p(y|x) cannot tell them apart,
    Theorem 1); Example 1 has no such parameters."""
    learned = _model(prior="learned")
    assert learned.prior == "learned" and "prior_means" in dict(learned.named_parameters())
    with torch.no_grad():                       # a reachable point of the learned variant: clusters 0 and 1 merged
        learned.prior_means[1] = learned.prior_means[0]
        learned.prior_log_scales[1] = learned.prior_log_scales[0]
    kl = learned.prior_pairwise_kl()
    assert kl[0, 1] == 0 and kl[1, 0] == 0 and kl[0, 2] > 0
    x = _data(8)
    p = learned.model_cluster_posterior(x, num_samples=3000, seed=0)
    torch.testing.assert_close(p[:, 0], p[:, 1], rtol=0, atol=1e-12)      # y = 0 and y = 1: indistinguishable
    # gradient descent can move the learned means onto each other; Example 1 has no prior parameter to move
    example1 = _model()
    assert not any("prior" in n for n, _ in example1.named_parameters())
    loss = example1.loss(x)[0]
    loss.backward()
    assert example1.prior_means.grad is None


def test_examples_where_example1_cannot_hold_raise_clearly():
    # pinwheel: 5 clusters, latent_dim <= D = 2 for the injective decoder
    with pytest.raises(ValueError, match=r"num_clusters = 5 > latent_dim = 2.*prior='learned'"):
        build_mixture_vae("lidgmvae", 2, 2, 5)
    with pytest.raises(ValueError, match=r"num_clusters = 10 > latent_dim = 8"):
        build_mixture_vae("lidgmvae", 784, 8, 10, "bernoulli")
    with pytest.raises(ValueError, match=r"num_clusters = 3 > latent_dim = 2"):
        build_mixture_vae("gmvae", 6, 2, 3, prior="example1")
    with pytest.raises(ValueError, match="num_clusters = 5 > latent_dim = 4"):
        example1_beta(5, 4)
    assert build_mixture_vae("lidgmvae", 2, 2, 5, prior="learned").prior == "learned"     # the named variant
    with pytest.raises(ValueError, match="prior"):
        build_mixture_vae("lidgmvae", 6, 4, 3, prior="fixed")
    with pytest.raises(ValueError, match="learn_prior"):
        build_mixture_vae("lidgmvae", 6, 4, 3, learn_prior=True)
    with pytest.raises(ValueError, match="gamma"):
        build_mixture_vae("lidgmvae", 6, 4, 3, gamma=0.0)
    enc, dec = GaussianEncoder(6 + 3, 4), MLPDecoder(4, 6, (8,), head="gaussian")
    with pytest.raises(ValueError, match="prior_means must be None"):
        MixtureVAE(nn.Linear(6, 3), enc, dec, 3, prior="example1", prior_means=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="learn_prior"):
        MixtureVAE(nn.Linear(6, 3), enc, dec, 3, prior="example1", learn_prior=True)


def test_the_ablation_cells_share_their_initial_networks():
    """{learned, Example 1} x {MLP, injective}: same seed, same q(y|x) and q(w|x, y); same decoder within a column;
    MLP decoders size-matched to the injective one."""
    cells = {(k, p): _model(k, prior=p) for k in ("gmvae", "lidgmvae") for p in PRIORS}
    ref = cells["gmvae", "learned"]
    for m in cells.values():
        for a, b in zip(ref.encoder.parameters(), m.encoder.parameters()):
            torch.testing.assert_close(a, b)
        for a, b in zip(ref.cluster_net.parameters(), m.cluster_net.parameters()):
            torch.testing.assert_close(a, b)
    for k in ("gmvae", "lidgmvae"):
        for a, b in zip(cells[k, "learned"].decoder.parameters(), cells[k, "example1"].decoder.parameters()):
            torch.testing.assert_close(a, b)
    assert cells["gmvae", "example1"].size_match["within_10pct"]
    with torch.no_grad():
        assert math.isfinite(float(cells["gmvae", "example1"].loss(_data(10))[0]))
