"""The simplex ETF: its geometry, its seed, and that an experiment saves and reuses it."""
import pytest
import torch

from ddpmseg.classifier.etf import ETF_FILE, load_or_create_etf, simplex_etf


@pytest.mark.parametrize("dim,K", [(32, 19), (32, 4), (128, 34), (19, 19)])
def test_simplex_etf_geometry(dim, K):
    E = simplex_etf(dim, K, seed=0).double()
    assert E.shape == (dim, K) and E.dtype == torch.float64
    gram = E.T @ E
    # Unit columns, every pair at cosine -1/(K-1), centred: the simplex ETF.
    want = (K / (K - 1)) * (torch.eye(K, dtype=torch.float64) - 1.0 / K)
    assert torch.allclose(gram, want, atol=1e-6)
    assert torch.allclose(E.sum(1), torch.zeros(dim, dtype=torch.float64), atol=1e-6)


def test_simplex_etf_is_seeded():
    assert torch.equal(simplex_etf(32, 19, 3), simplex_etf(32, 19, 3))
    assert not torch.allclose(simplex_etf(32, 19, 3), simplex_etf(32, 19, 4))


def test_simplex_etf_needs_enough_dimensions():
    with pytest.raises(ValueError, match="width >= 30, got 29"):
        simplex_etf(29, 30, 0)


def test_experiment_saves_and_reuses_its_frame(tmp_path):
    first = load_or_create_etf(str(tmp_path), 32, 19, seed=0)
    assert (tmp_path / ETF_FILE).exists()
    # A rerun (even with another seed) reuses the saved frame, so resumed members see the same targets.
    assert torch.equal(load_or_create_etf(str(tmp_path), 32, 19, seed=7), first)
    with pytest.raises(ValueError, match=r"\(32, 19\) frame but this run needs \(128, 34\)"):
        load_or_create_etf(str(tmp_path), 128, 34, seed=0)


def _hand_features(ens, m: int, x: torch.Tensor) -> torch.Tensor:
    """Member ``m``'s penultimate features, from its weights in the original nn.Sequential layout
    (Linear, ReLU, BatchNorm1d, Linear, ReLU, BatchNorm1d), in training mode (batch statistics)."""
    sd = ens.member_state_dict(m)
    h1, h2 = sd["layers.0.weight"].shape[0], sd["layers.3.weight"].shape[0]
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[-1], h1), torch.nn.ReLU(), torch.nn.BatchNorm1d(h1),
                              torch.nn.Linear(h1, h2), torch.nn.ReLU(), torch.nn.BatchNorm1d(h2)).double().train()
    net.load_state_dict({k.replace("layers.", ""): v for k, v in sd.items() if not k.startswith("layers.6")})
    return net(x)


def _cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of log(sum exp z) - z[y], written out."""
    return (z.exp().sum(1).log() - z[torch.arange(len(y)), y]).mean()


def test_etf_loss_equals_a_hand_computation():
    """loss = alpha * CE(logits) + beta * CE(penultimate @ E), each member on its own batch. Float64
    throughout, so the only differences are summation orders: 1e-12 holds on any machine."""
    from ddpmseg.classifier.ensemble import PixelEnsemble
    from ddpmseg.classifier.train import member_losses

    M, B, C, K = 3, 16, 12, 5
    g = torch.Generator().manual_seed(0)
    ens = PixelEnsemble(M, C, K, generators=[torch.Generator().manual_seed(m) for m in range(M)]).double().train()
    x, y = torch.randn(M, B, C, generator=g, dtype=torch.float64), torch.randint(0, K, (M, B), generator=g)
    E = simplex_etf(32, K, seed=0).double()
    logits, features = ens(x, with_features=True)
    ce, total = member_losses(logits, features, y, E, etf_alpha=0.7, etf_beta=0.4)
    for m in range(M):
        f = _hand_features(ens, m, x[m])
        head_w, head_b = ens.member_state_dict(m)["layers.6.weight"], ens.member_state_dict(m)["layers.6.bias"]
        want_ce = _cross_entropy(f @ head_w.T + head_b, y[m])
        want = 0.7 * want_ce + 0.4 * _cross_entropy(f @ E, y[m])
        assert abs(ce[m].item() - want_ce.item()) < 1e-12 and abs(total[m].item() - want.item()) < 1e-12
    # Without a frame the minimised loss is the classifier's own.
    ce_only, total_only = member_losses(logits, features, y, None, etf_alpha=0.7, etf_beta=0.4)
    assert torch.equal(ce_only, ce) and torch.equal(total_only, ce)
