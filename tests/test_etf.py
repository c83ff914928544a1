"""The simplex ETF: its geometry, its seed, and that an experiment saves and reuses it."""
import pytest
import torch

from ddpmseg.etf import ETF_FILE, load_or_create_etf, simplex_etf


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
