"""Decoders: LIDVAE injectivity (Definition 3, Proposition 2) vs a classical MLP, heads, registration, I/O."""
from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lidvae_mini.models.decoders import (InjectiveDecoder, MLPDecoder, count_parameters, matched_mlp_hidden,
                                         mlp_parameter_count)

HEADS = ["bernoulli", "gaussian", "categorical"]


pytestmark = pytest.mark.usefixtures("single_torch_thread")

def _lid(K=3, D=7, head="bernoulli", seed=0, **kw):
    torch.manual_seed(seed)
    return InjectiveDecoder(K, D, hidden1=(16, 16), hidden2=(24, 24), head=head, **kw)


def _data(head, B, D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if head == "bernoulli":
        return (torch.rand(B, D, generator=gen) > 0.5).float()
    if head == "gaussian":
        return torch.randn(B, D, generator=gen)
    return torch.randint(0, D, (B,), generator=gen)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-4, 10.0), act=st.sampled_from(["leaky_relu", "softplus"]))
def test_injective_decoder_separates_distinct_latents(seed, scale, act):
    """|eta(z) - eta(z')| >= alpha^2 |z - z'| > 0 for z != z' (strong monotonicity of g1, g2; beta isometric)."""
    dec = _lid(seed=seed, activation=act).double()
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(256, 3, generator=gen, dtype=torch.float64)
    z2 = z1 + scale * torch.randn(256, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        dist = (dec(z1) - dec(z2)).norm(dim=-1)
    bound = dec.injectivity_bound(z1, z2)
    assert bool((bound > 0).all())
    assert bool((dist >= bound * (1 - 1e-9)).all())
    assert float(dist.min()) > 0


def test_mlp_decoder_with_a_dead_latent_is_not_injective():
    """Contrast: zero the first-layer weights of latent 0 and z, z + c e_0 give identical likelihoods."""
    torch.manual_seed(0)
    mlp = MLPDecoder(3, 7, hidden=(16, 16), head="bernoulli")
    with torch.no_grad():
        mlp.first_layer.weight[:, 0] = 0.0
    z1 = torch.randn(64, 3)
    z2 = z1.clone()
    z2[:, 0] += torch.randn(64) * 5
    with torch.no_grad():
        assert torch.equal(mlp(z1), mlp(z2))
    x = _data("bernoulli", 64, 7)
    assert torch.equal(mlp.log_prob(x, z1), mlp.log_prob(x, z2))
    # the injective decoder separates exactly the same pairs
    lid = _lid()
    with torch.no_grad():
        assert float((lid(z1) - lid(z2)).norm(dim=-1).min()) > 0


def test_beta_is_a_fixed_full_rank_zero_one_buffer():
    dec = _lid(K=3, D=7)
    assert "beta" in dict(dec.named_buffers()) and "beta" not in dict(dec.named_parameters())
    assert torch.equal(dec.beta, torch.eye(3, 7))
    assert torch.linalg.matrix_rank(dec.beta) == 3
    assert set(dec.beta.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("head", HEADS)
def test_heads_shapes_distributions_and_log_prob(head):
    dec = _lid(head=head)
    z = torch.randn(5, 3)
    x = _data(head, 5, 7)
    eta = dec(z)
    assert eta.shape == (5, 7)
    lp = dec.log_prob(x, z)
    assert lp.shape == (5,) and torch.isfinite(lp).all()
    dist = dec.distribution(z)
    assert torch.allclose(dist.log_prob(x), lp)
    if head == "bernoulli":
        ref = -torch.nn.functional.binary_cross_entropy_with_logits(eta, x, reduction="none").sum(-1)
    elif head == "gaussian":
        ref = torch.distributions.Normal(eta, 1.0).log_prob(x).sum(-1)  # learned scale starts at 1
    else:
        ref = torch.log_softmax(eta, -1).gather(1, x[:, None]).squeeze(1)
    assert torch.allclose(lp, ref, atol=1e-5)


def test_gaussian_fixed_and_learned_scale():
    learned = _lid(head="gaussian")
    assert "log_scale" in dict(learned.named_parameters())
    fixed = _lid(head="gaussian", fixed_scale=0.5)
    assert "log_scale" not in dict(fixed.named_parameters())
    assert torch.allclose(fixed.scale(), torch.full((7,), 0.5))
    z, x = torch.randn(4, 3), torch.randn(4, 7)
    ref = torch.distributions.Normal(fixed(z), 0.5).log_prob(x).sum(-1)
    assert torch.allclose(fixed.log_prob(x, z), ref)
    with pytest.raises(ValueError):
        _lid(head="bernoulli", fixed_scale=0.5)
    with pytest.raises(ValueError):
        _lid(head="gaussian", fixed_scale=-1.0)


@pytest.mark.parametrize("make", [lambda: _lid(head="gaussian"), lambda: MLPDecoder(3, 7, (8, 8), head="gaussian")])
def test_every_parameter_registered_and_trained(make):
    dec = make()
    names = [n for n, _ in dec.named_parameters()]
    assert set(names) <= set(dec.state_dict())
    z, x = torch.randn(32, 3, requires_grad=True), torch.randn(32, 7)
    (-dec.log_prob(x, z).mean()).backward()
    for n, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("head", HEADS)
def test_save_load_reproduces_outputs_exactly(head, tmp_path):
    dec = _lid(head=head, seed=1)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)  # move away from the initialisation first
    z, x = torch.randn(16, 3), _data(head, 16, 7)
    for _ in range(3):
        opt.zero_grad()
        (-dec.log_prob(x, z).mean()).backward()
        opt.step()
    path = tmp_path / "dec.pt"
    torch.save(dec.state_dict(), path)
    fresh = _lid(head=head, seed=99)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh(z), dec(z))
        assert torch.equal(fresh.log_prob(x, z), dec.log_prob(x, z))


def test_grad_modes_agree_in_the_decoder():
    a = _lid(seed=3).double()
    b = _lid(seed=3, grad_mode="autograd").double()
    z = torch.randn(10, 3, dtype=torch.float64)
    assert torch.allclose(a(z), b(z), atol=1e-12)


def test_parameter_matching_helper():
    lid = InjectiveDecoder(8, 50, hidden1=(16, 16), hidden2=(64, 64))
    hidden = matched_mlp_hidden(lid, 8, 50)
    mlp = MLPDecoder(8, 50, hidden)
    n_lid, n_mlp = count_parameters(lid), count_parameters(mlp)
    assert abs(n_mlp - n_lid) <= 0.1 * n_lid
    assert mlp_parameter_count(8, 50, hidden) == n_mlp
    assert mlp_parameter_count(8, 50, (5,), head="gaussian") == count_parameters(MLPDecoder(8, 50, 5, head="gaussian"))
    with pytest.raises(ValueError):
        matched_mlp_hidden(10, 8, 50)  # smaller than any MLP


def test_k_greater_than_d_is_rejected():
    with pytest.raises(ValueError, match="must not exceed"):
        InjectiveDecoder(5, 4)
    with pytest.raises(ValueError):
        InjectiveDecoder(3, 7, head="poisson")


@pytest.mark.parametrize("z, err", [
    (torch.randn(4), ValueError), (torch.randn(4, 2), ValueError), (torch.ones(4, 3, dtype=torch.int64), TypeError),
    (torch.randn(4, 3, dtype=torch.float64), TypeError), (torch.tensor([[0.0, float("nan"), 0.0]]), ValueError),
    (None, TypeError),
])
def test_bad_latents(z, err):
    for dec in (_lid(), MLPDecoder(3, 7, 8)):
        with pytest.raises(err):
            dec(z)


@pytest.mark.parametrize("head, x, err", [
    ("bernoulli", torch.full((4, 7), 0.5), ValueError),           # not binary
    ("bernoulli", torch.ones(4, 6), ValueError),                  # wrong D
    ("bernoulli", torch.ones(3, 7), ValueError),                  # wrong B
    ("gaussian", torch.full((4, 7), float("inf")), ValueError),   # non-finite
    ("gaussian", torch.ones(4, 7, dtype=torch.complex64), TypeError),
    ("categorical", torch.tensor([0, 1, 7, 2]), ValueError),      # id out of range
    ("categorical", torch.tensor([0, -1, 3, 2]), ValueError),
    ("categorical", torch.tensor([0.0, 1.5, 3.0, 2.0]), ValueError),  # not an integer
    ("categorical", torch.zeros(4, 7, dtype=torch.long), ValueError),  # one-hot instead of ids
    ("categorical", [0, 1, 2, 3], TypeError),
])
def test_bad_data(head, x, err):
    dec = _lid(head=head)
    with pytest.raises(err):
        dec.log_prob(x, torch.randn(4, 3))


def test_bernoulli_accepts_integer_and_bool_binary_data():
    dec = _lid()
    z = torch.randn(4, 3)
    xf = _data("bernoulli", 4, 7)
    assert torch.allclose(dec.log_prob(xf.bool(), z), dec.log_prob(xf, z))
    assert torch.allclose(dec.log_prob(xf.long(), z), dec.log_prob(xf, z))


def test_state_dict_round_trip_through_bytes_buffer():
    dec = _lid()
    buf = io.BytesIO()
    torch.save(dec.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert set(state) == set(dec.state_dict())


# ------------------------------------------------------------------------- the beta family: fixed and learned
def _pairs(K, n=2000, seed=1):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, K, generator=g)
    close = z1[: n // 2] + 1e-3 * torch.randn(n // 2, K, generator=g)        # close pairs as well as random ones
    z2 = torch.cat([close, torch.randn(n - n // 2, K, generator=g)])
    return z1, z2


@pytest.mark.parametrize("beta", ["fixed", "learned"])
def test_the_injectivity_bound_with_sigma_min_holds_before_and_after_training(beta):
    """||eta(z) - eta(z')|| >= alpha^2 sigma_min(beta) ||z - z'|| on random and close pairs, at initialisation and
    after training that moves every parameter (beta's scales included); beta keeps rank K throughout."""
    dec = _lid(K=3, D=7, head="gaussian", beta=beta, alpha=0.3)
    x = torch.randn(256, 7, generator=torch.Generator().manual_seed(2)) * 3
    opt = torch.optim.Adam(dec.parameters(), lr=5e-2)
    for step in range(2):
        z1, z2 = _pairs(3)
        with torch.no_grad():
            gap = (dec(z1) - dec(z2)).norm(dim=-1)
            assert (gap >= dec.injectivity_bound(z1, z2) * (1 - 1e-4)).all()
        sv = dec.beta_singular_values().detach()
        assert sv.shape == (3,) and sv[-1] > 0 and torch.linalg.matrix_rank(dec.beta_matrix().detach()) == 3
        if step == 0:
            for _ in range(150):
                opt.zero_grad()
                (-dec.log_prob(x, torch.randn(256, 3)).mean()).backward()
                opt.step()
    if beta == "learned":
        q = dec.lift.orthonormal_frame().detach()
        torch.testing.assert_close(q.T @ q, torch.eye(3), atol=1e-5, rtol=0)       # orthonormal columns
        assert not torch.allclose(dec.lift.log_scale.detach(), torch.zeros(3))      # the scales did move
        torch.testing.assert_close(dec.beta_singular_values().detach(),
                                   torch.linalg.svdvals(dec.beta_matrix().detach()), atol=1e-5, rtol=1e-5)


def test_the_fixed_beta_reaches_the_first_k_coordinates_only():
    """The paper's zero-one beta writes g_1(z) into coordinates 0..K-1 of g_2's input (for a flattened image, its
    first K pixels); every other coordinate of beta^T g_1(z) is zero."""
    dec = _lid(K=3, D=7)
    with torch.no_grad():
        lifted = dec.g1(torch.randn(5, 3)) @ dec.beta_matrix()
    assert (lifted[:, 3:] == 0).all() and (lifted[:, :3] != 0).all()


def test_a_learned_beta_has_a_bias_only_when_asked_and_round_trips():
    plain, biased = _lid(beta="learned"), _lid(beta="learned", beta_bias=True)
    assert plain.lift.bias is None and biased.lift.bias.shape == (7,)
    buf = io.BytesIO()
    torch.save(biased.state_dict(), buf)
    buf.seek(0)
    other = _lid(beta="learned", beta_bias=True, seed=5)
    other.load_state_dict(torch.load(buf, weights_only=True))
    z = torch.randn(4, 3)
    with torch.no_grad():
        torch.testing.assert_close(other(z), biased(z))


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta="dense"), "beta"),
    (dict(beta=torch.tensor([[1.0, 0, 0, 0, 0, 0, 0], [2.0, 0, 0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0, 0]])),
     "rank below K = 3"),
    (dict(beta=torch.ones(3, 5)), r"\(K, D\) = \(3, 7\)"),
    (dict(beta="fixed", beta_bias=True), "beta_bias needs beta='learned'"),
    (dict(g2_active_inputs=8), "active_inputs must be at most dim = 7"),
])
def test_a_beta_that_could_lose_rank_and_other_bad_choices_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _lid(K=3, D=7, **kwargs)


def test_a_given_full_rank_beta_is_a_fixed_buffer():
    b = torch.zeros(2, 5)
    b[0, 4], b[1, 2] = 1.0, -2.0
    dec = _lid(K=2, D=5, beta=b)
    assert "beta" in dict(dec.named_buffers()) and torch.equal(dec.beta, b)
    torch.testing.assert_close(dec.beta_singular_values(), torch.tensor([2.0, 1.0]))


def test_g2_initialised_for_its_active_inputs_starts_at_unit_scale():
    """g_2 reads beta^T g_1(z): K of D coordinates carry signal. Initialised for D active inputs its first-layer
    pre-activations start with standard deviation sqrt(K/D); for K (g2_active_inputs=K), about 1."""
    K, D = 16, 784
    u = torch.randn(4000, K, generator=torch.Generator().manual_seed(0))
    stds = {}
    for active in (None, K):
        torch.manual_seed(0)
        dec = InjectiveDecoder(K, D, hidden1=(8,), hidden2=(64,), g2_active_inputs=active)
        with torch.no_grad():
            pre = dec.g2.potential_net.A[0](u @ dec.beta_matrix())
        stds[active] = float(pre.std())
    assert abs(stds[None] / (K / D) ** 0.5 - 1) < 0.2 and abs(stds[K] - 1) < 0.2, stds
