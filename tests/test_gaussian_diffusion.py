"""guided_diffusion.gaussian_diffusion (and resample): schedules, formulas, RNG order, parity."""
import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES, load_fixture, require

from guided_diffusion.gaussian_diffusion import (
    GaussianDiffusion,
    LossType,
    ModelMeanType,
    ModelVarType,
    _extract_into_tensor,
    get_named_beta_schedule,
)
from guided_diffusion.resample import LossSecondMomentResampler, UniformSampler, create_named_schedule_sampler


def _diffusion(steps=1000, var_type=ModelVarType.FIXED_LARGE, loss_type=LossType.MSE, schedule="linear"):
    # The linear schedule needs >= 20 steps (beta_T = 0.02 * 1000 / T); short tests use cosine.
    return GaussianDiffusion(
        betas=get_named_beta_schedule(schedule, steps),
        model_mean_type=ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
    )


def _const_model(eps_value=0.0, var_values=None):
    """A parameter-free model predicting a constant eps (and constant variance channels)."""

    def model(x, t):
        eps = torch.full_like(x, eps_value)
        if var_values is None:
            return eps
        v = torch.as_tensor(var_values, dtype=x.dtype).view(-1, 1, 1, 1).expand_as(x)
        return torch.cat([eps, v], dim=1)

    return model


def _toy_model(x, t):
    """Parameter-free, input-dependent eps model: makes every step's output depend on x_t."""
    return 0.3 * x + 0.001 * t.float().view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_named_betas_match_reference(name):
    with open(require(FIXTURES / "diffusion_schedules.json")) as f:
        expected = np.array(json.load(f)[f"{name}_betas_1000"])
    betas = get_named_beta_schedule(name, 1000)
    assert betas.dtype == np.float64
    assert np.abs(betas - expected).max() <= 1e-12


def test_unknown_schedule_names_the_accepted_ones():
    with pytest.raises(ValueError, match="linear.*cosine"):
        get_named_beta_schedule("quadratic", 1000)


@pytest.mark.parametrize(
    "t,alpha_bar,sqrt_ab,sqrt_1m_ab",
    [
        (50, 0.969951, 0.984861, 0.173345),
        (150, 0.785887, 0.886503, 0.462723),
        (250, 0.521423, 0.722096, 0.691793),
    ],
)
def test_alpha_bar_reference_table(t, alpha_bar, sqrt_ab, sqrt_1m_ab):
    d = _diffusion()
    assert d.alphas_cumprod.dtype == np.float64
    assert d.alphas_cumprod[t] == pytest.approx(alpha_bar, abs=1e-6)
    assert d.sqrt_alphas_cumprod[t] == pytest.approx(sqrt_ab, abs=1e-6)
    assert d.sqrt_one_minus_alphas_cumprod[t] == pytest.approx(sqrt_1m_ab, abs=1e-6)
    assert d.alphas_cumprod[999] == pytest.approx(4.0358e-5, rel=1e-4)


def test_extract_casts_float64_entries_to_float32_and_broadcasts():
    d = _diffusion()
    t = torch.tensor([0, 999])
    out = _extract_into_tensor(d.sqrt_recipm1_alphas_cumprod, t, (2, 3, 4, 4))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 4)
    expected = torch.tensor(d.sqrt_recipm1_alphas_cumprod[[0, 999]], dtype=torch.float32)
    assert torch.equal(out[:, 1, 2, 3], expected)


# ----------------------------------------------------------------------------- formulas
def test_q_sample_equals_formula():
    d = _diffusion()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    ab = d.alphas_cumprod[[0, 500, 999]].reshape(3, 1, 1, 1)
    expected = np.sqrt(ab) * x0.double().numpy() + np.sqrt(1 - ab) * noise.double().numpy()
    np.testing.assert_allclose(d.q_sample(x0, t, noise=noise).numpy(), expected, atol=1e-6)


def test_fixed_large_and_fixed_small_variances():
    x, t = torch.zeros(3, 3, 2, 2), torch.tensor([0, 1, 7])
    d = _diffusion(100)
    large = d.p_mean_variance(_const_model(), x, t)
    expected = [d.posterior_variance[1], d.betas[1], d.betas[7]]  # beta_0 replaced by sigma~^2_1
    np.testing.assert_allclose(large["variance"][:, 0, 0, 0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(large["log_variance"][:, 0, 0, 0].numpy(), np.log(expected), rtol=1e-6)

    small = _diffusion(100, ModelVarType.FIXED_SMALL).p_mean_variance(_const_model(), x, t)
    assert small["variance"][0].abs().max() == 0  # the true posterior variance at t = 0
    expected_log = np.log(d.posterior_variance[[1, 1, 7]])  # clipped: index 0 uses index 1
    np.testing.assert_allclose(small["log_variance"][:, 0, 0, 0].numpy(), expected_log, rtol=1e-6)


def test_learned_range_interpolates_log_variance():
    d = _diffusion(100, ModelVarType.LEARNED_RANGE)
    v = [-1.0, 0.0, 1.0, 0.5]
    t = torch.tensor([0, 7, 7, 30])
    out = d.p_mean_variance(_const_model(var_values=v), torch.zeros(4, 3, 2, 2), t)
    min_log = d.posterior_log_variance_clipped[t.numpy()]  # index 0 uses sigma~^2_1
    max_log = np.log(d.betas[t.numpy()])
    frac = (np.array(v) + 1) / 2
    expected = frac * max_log + (1 - frac) * min_log
    np.testing.assert_allclose(out["log_variance"][:, 0, 0, 0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(out["variance"][:, 0, 0, 0].numpy(), np.exp(expected), rtol=1e-6)


def test_pred_xstart_is_clipped_before_the_posterior_mean():
    d = _diffusion(100)
    x, t = torch.full((1, 3, 2, 2), 0.5), torch.tensor([50])
    model = _const_model(eps_value=-3.0)  # x_0 estimate far above 1
    clipped = d.p_mean_variance(model, x, t)
    assert torch.equal(clipped["pred_xstart"], torch.ones_like(x))
    expected_mean = d.posterior_mean_coef1[50] * 1.0 + d.posterior_mean_coef2[50] * 0.5
    assert clipped["mean"][0, 0, 0, 0].item() == pytest.approx(expected_mean, rel=1e-6)
    raw = d.p_mean_variance(model, x, t, clip_denoised=False)
    assert raw["pred_xstart"].min() > 1.0


# ----------------------------------------------------------------------------- RNG stream
@pytest.mark.parametrize("loop", ["p_sample_loop", "ddim_sample_loop"])
def test_sampling_loops_draw_one_randn_then_one_per_step(loop):
    d, shape, eta = _diffusion(6, schedule="cosine"), (2, 3, 4, 4), 0.5
    torch.manual_seed(123)
    sample = getattr(d, loop)(_toy_model, shape, **({"eta": eta} if loop == "ddim_sample_loop" else {}))
    after = torch.randn(5)

    # Replay by hand with the same seed: randn(shape), then one randn per step (t = 5 .. 0).
    torch.manual_seed(123)
    x = torch.randn(*shape)
    for i in range(5, -1, -1):
        out = d.p_mean_variance(_toy_model, x, torch.tensor([i, i]))
        noise = torch.randn(*shape)  # drawn even at t = 0, where it is masked out
        if loop == "p_sample_loop":
            x = out["mean"] + (i != 0) * torch.exp(0.5 * out["log_variance"]) * noise
        else:
            ab, ab_prev = d.alphas_cumprod[i], d.alphas_cumprod_prev[i]
            eps = (x / np.sqrt(ab) - out["pred_xstart"]) / np.sqrt(1 / ab - 1)
            sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab)) * np.sqrt(1 - ab / ab_prev)
            mean = out["pred_xstart"] * np.sqrt(ab_prev) + np.sqrt(1 - ab_prev - sigma**2) * eps
            x = mean + (i != 0) * sigma * noise
    assert torch.equal(after, torch.randn(5))
    torch.testing.assert_close(sample, x, rtol=0, atol=1e-5)


def test_ddim_eta0_still_draws_noise_each_step():
    d, shape = _diffusion(4, schedule="cosine"), (1, 3, 4, 4)
    torch.manual_seed(7)
    d.ddim_sample_loop(_toy_model, shape, eta=0.0)
    after = torch.randn(3)
    torch.manual_seed(7)
    for _ in range(1 + 4):
        torch.randn(*shape)
    assert torch.equal(after, torch.randn(3))


def test_progress_shows_a_tqdm_bar(capsys):
    _diffusion(3, schedule="cosine").p_sample_loop(_toy_model, (1, 3, 2, 2), progress=True)
    assert "3/3" in capsys.readouterr().err


def test_sampling_is_deterministic_under_a_seed():
    d = _diffusion(5, schedule="cosine")
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(d.p_sample_loop(_toy_model, (1, 3, 4, 4)))
    assert torch.equal(runs[0], runs[1])


# ----------------------------------------------------------------------------- parity
def test_ddim10_matches_official_fixture(tiny_model_and_diffusion):
    fx = load_fixture("tiny256_ddim10.pt")
    model, diffusion = tiny_model_and_diffusion("tiny256", timestep_respacing=fx["respacing"])
    noise = fx["noise"]
    with torch.no_grad():
        out = diffusion.p_mean_variance(model, noise, torch.tensor([5]), clip_denoised=True)
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        assert (out[key] - fx["p_mean_variance_t5"][key]).abs().max() <= 1e-4, key
    sample = diffusion.ddim_sample_loop(model, tuple(noise.shape), noise=noise, clip_denoised=True, eta=0.0)
    assert (sample - fx["ddim_eta0_sample"]).abs().max() <= 1e-4


# ----------------------------------------------------------------------------- losses
class TinyNet(torch.nn.Module):
    """A 3x3 conv predicting eps and variance values (ignores t): enough to exercise the losses."""

    def __init__(self, out_channels=6):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, out_channels, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    return x0, torch.tensor([0, 1, 50, 99]), torch.randn(4, 3, 8, 8, generator=g)


def test_hybrid_training_losses(batch):
    x0, t, noise = batch
    torch.manual_seed(0)
    net = TinyNet()
    plain = _diffusion(100, ModelVarType.LEARNED_RANGE, LossType.MSE).training_losses(net, x0, t, noise=noise)
    rescaled = _diffusion(100, ModelVarType.LEARNED_RANGE, LossType.RESCALED_MSE).training_losses(
        net, x0, t, noise=noise
    )
    for terms in (plain, rescaled):
        assert set(terms) == {"loss", "mse", "vb"}
        assert all(v.shape == (4,) and torch.isfinite(v).all() for v in terms.values())
        torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    torch.testing.assert_close(rescaled["mse"], plain["mse"])
    torch.testing.assert_close(rescaled["vb"], plain["vb"] * 100 / 1000)
    # EPSILON target: the noise, against the eps channels of the model run on x_t.
    x_t = _diffusion(100).q_sample(x0, t, noise=noise)
    torch.testing.assert_close(plain["mse"], ((noise - net(x_t, t)[:, :3]) ** 2).mean(dim=(1, 2, 3)))


def test_vb_term_only_trains_the_variance_channels(batch):
    x0, t, noise = batch
    out = torch.randn(4, 6, 8, 8, requires_grad=True)
    terms = _diffusion(100, ModelVarType.LEARNED_RANGE).training_losses(lambda x, t: out, x0, t, noise=noise)
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert grad_vb[:, :3].abs().max() == 0 and grad_vb[:, 3:].abs().max() > 0
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), out)
    assert grad_mse[:, 3:].abs().max() == 0 and grad_mse[:, :3].abs().max() > 0


def test_fixed_variance_and_kl_losses(batch):
    x0, t, noise = batch
    net = TinyNet(out_channels=3)
    mse_terms = _diffusion(100).training_losses(net, x0, t, noise=noise)
    assert set(mse_terms) == {"loss", "mse"}
    net6 = TinyNet()
    kl, rkl = (
        _diffusion(100, ModelVarType.LEARNED_RANGE, loss).training_losses(net6, x0, t, noise=noise)
        for loss in (LossType.KL, LossType.RESCALED_KL)
    )
    assert set(kl) == {"loss"}
    torch.testing.assert_close(rkl["loss"], kl["loss"] * 100)
    assert (kl["loss"] > 0).all()


def test_calc_bpd_loop_and_prior():
    d = _diffusion(4, ModelVarType.LEARNED_RANGE, schedule="cosine")
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    out = d.calc_bpd_loop(TinyNet(), x0)
    assert out["vb"].shape == out["mse"].shape == out["xstart_mse"].shape == (2, 4)
    torch.testing.assert_close(out["total_bpd"], out["vb"].sum(dim=1) + out["prior_bpd"])
    # With 1000 linear steps x_T is almost pure noise: the prior term is tiny.
    assert _diffusion(1000)._prior_bpd(x0).max() < 1e-3


# ----------------------------------------------------------------------------- resample
def test_schedule_samplers():
    d = _diffusion(10, schedule="cosine")
    assert isinstance(create_named_schedule_sampler("uniform", d), UniformSampler)
    with pytest.raises(ValueError, match="uniform, loss-second-moment"):
        create_named_schedule_sampler("nope", d)
    sampler = create_named_schedule_sampler("loss-second-moment", d)
    assert isinstance(sampler, LossSecondMomentResampler)
    np.testing.assert_array_equal(sampler.weights(), np.ones(10))  # uniform until warmed up

    losses = torch.arange(1, 11, dtype=torch.float32)
    for _ in range(10):
        sampler.update_with_local_losses(torch.arange(10), losses)
    w = sampler.weights()
    expected = losses.double().numpy() / losses.sum().item() * (1 - 0.001) + 0.001 / 10
    np.testing.assert_allclose(w, expected)
    np.random.seed(0)
    ts, weights = sampler.sample(64, "cpu")
    assert ts.dtype == torch.int64 and weights.dtype == torch.float32
    np.testing.assert_allclose(weights.numpy(), 1 / (10 * expected[ts.numpy()]), rtol=1e-6)
