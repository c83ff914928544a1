"""guided_diffusion.gaussian_diffusion (and resample): schedules, formulas, RNG order, parity."""
import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES, load_fixture

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
    with open(FIXTURES / "diffusion_schedules.json") as f:
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


# ----------------------------------------------------------------------------- values vs independent numbers
class _Reference:
    """The improved-DDPM formulas written out again in float64 numpy from the betas alone, with the
    model of ``_learned_model``: the numbers the class must reproduce (learned-range variance)."""

    def __init__(self, betas):
        b = np.asarray(betas, dtype=np.float64)
        self.b, self.abar = b, np.cumprod(1 - b)
        self.abar_prev, self.abar_next = np.append(1.0, self.abar[:-1]), np.append(self.abar[1:], 0.0)
        post_var = b * (1 - self.abar_prev) / (1 - self.abar)
        self.post_logvar = np.log(np.append(post_var[1], post_var[1:]))  # clipped: no log(0) at t = 0
        self.c1 = b * np.sqrt(self.abar_prev) / (1 - self.abar)
        self.c2 = (1 - self.abar_prev) * np.sqrt(1 - b) / (1 - self.abar)

    def posterior(self, x0, xt, t):
        return self.c1[t] * x0 + self.c2[t] * xt, self.post_logvar[t]

    def p_mean_var(self, x, t, clip=True):
        eps, v = 0.3 * x + 0.001 * t, np.tanh(x)
        x0 = np.sqrt(1 / self.abar[t]) * x - np.sqrt(1 / self.abar[t] - 1) * eps
        x0 = np.clip(x0, -1, 1) if clip else x0
        frac = (v + 1) / 2
        logvar = frac * np.log(self.b[t]) + (1 - frac) * self.post_logvar[t]
        return self.posterior(x0, x, t)[0], logvar, x0

    def eps_from_x0(self, x, t, x0):
        return (np.sqrt(1 / self.abar[t]) * x - x0) / np.sqrt(1 / self.abar[t] - 1)


def _learned_model(x, t):
    """eps = 0.3 x + 0.001 t and variance channels tanh(x): every output depends on x and t."""
    return torch.cat([0.3 * x + 0.001 * t.float().view(-1, 1, 1, 1), torch.tanh(x)], dim=1)


def _kl_bits(m1, lv1, m2, lv2):
    kl = 0.5 * (-1 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))
    return kl.reshape(len(kl), -1).mean(1) / np.log(2)


def _decoder_nll_bits(x, mean, logvar):
    cdf = lambda v: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))  # noqa: E731
    inv_std = np.exp(-0.5 * logvar)
    up, lo = cdf(inv_std * (x - mean + 1 / 255)), cdf(inv_std * (x - mean - 1 / 255))
    logp = np.where(x < -0.999, np.log(np.maximum(up, 1e-12)),
                    np.where(x > 0.999, np.log(np.maximum(1 - lo, 1e-12)), np.log(np.maximum(up - lo, 1e-12))))
    return -logp.reshape(len(x), -1).mean(1) / np.log(2)


# The class evaluates these formulas in float32 (its coefficient tables are cast to float32) on
# operands of order 1, so it differs from the float64 numbers by a few float32 roundings (~1e-6);
# rtol 1e-4 / atol 1e-5 holds on any machine, while a wrong coefficient moves values by > 1e-2.
TOL = dict(rtol=1e-4, atol=1e-5)


def test_bits_per_dim_loop_equals_independent_numbers():
    """calc_bpd_loop: per-step KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in bits, the decoder NLL at
    t = 0, the prior term and their total, from the same noise draws (one randn per step, T-1 down to 0)."""
    T = 4
    d = _diffusion(T, ModelVarType.LEARNED_RANGE, schedule="cosine")
    ref = _Reference(get_named_beta_schedule("cosine", T))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (2, 3, 4, 4), generator=g).float() / 127.5 - 1  # 8-bit values, both ends too
    x0[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])
    torch.manual_seed(5)
    out = d.calc_bpd_loop(_learned_model, x0)
    torch.manual_seed(5)
    noises = [torch.randn_like(x0).double().numpy() for _ in range(T)]
    x = x0.double().numpy()
    vb, xstart_mse = np.zeros((2, T)), np.zeros((2, T))
    for j, t in enumerate(range(T - 1, -1, -1)):
        xt = np.sqrt(ref.abar[t]) * x + np.sqrt(1 - ref.abar[t]) * noises[j]
        mean, logvar, px0 = ref.p_mean_var(xt, t)
        true_mean, true_logvar = ref.posterior(x, xt, t)
        # Column j is step T-1-j: the loop order, as guided-diffusion stacks them.
        vb[:, j] = _decoder_nll_bits(x, mean, logvar) if t == 0 else _kl_bits(true_mean, true_logvar, mean, logvar)
        xstart_mse[:, j] = ((px0 - x) ** 2).reshape(2, -1).mean(1)
    prior = _kl_bits(np.sqrt(ref.abar[-1]) * x, np.log(1 - ref.abar[-1]), 0.0, 0.0)
    np.testing.assert_allclose(out["vb"].numpy(), vb, **TOL)
    np.testing.assert_allclose(out["xstart_mse"].numpy(), xstart_mse, **TOL)
    np.testing.assert_allclose(out["prior_bpd"].numpy(), prior, **TOL)
    np.testing.assert_allclose(out["total_bpd"].numpy(), vb.sum(1) + prior, **TOL)


def test_condition_mean_and_score_and_ddim_inversion_equal_independent_numbers():
    """Classifier guidance, ancestral (mean + variance * grad) and DDIM (eps - sqrt(1 - abar) * grad,
    then x_0 and the posterior mean again), and the DDIM inversion step x_t -> x_{t+1}."""
    T, t_val = 10, 6
    d = _diffusion(T, ModelVarType.LEARNED_RANGE, schedule="cosine")
    ref = _Reference(get_named_beta_schedule("cosine", T))
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.full((2,), t_val)
    cond_fn = lambda x, t: -0.5 * x + 0.01 * t.float().view(-1, 1, 1, 1)  # noqa: E731  a stand-in gradient
    xn = x.double().numpy()
    grad = -0.5 * xn + 0.01 * t_val
    mean, logvar, x0 = ref.p_mean_var(xn, t_val)
    out = d.p_mean_variance(_learned_model, x, t)
    np.testing.assert_allclose(d.condition_mean(cond_fn, out, x, t).numpy(), mean + np.exp(logvar) * grad, **TOL)

    eps = ref.eps_from_x0(xn, t_val, x0) - np.sqrt(1 - ref.abar[t_val]) * grad
    guided_x0 = np.sqrt(1 / ref.abar[t_val]) * xn - np.sqrt(1 / ref.abar[t_val] - 1) * eps
    scored = d.condition_score(cond_fn, out, x, t)
    np.testing.assert_allclose(scored["pred_xstart"].numpy(), guided_x0, **TOL)
    np.testing.assert_allclose(scored["mean"].numpy(), ref.posterior(guided_x0, xn, t_val)[0], **TOL)

    # The ancestral step uses the guided mean: same noise draw, independent numbers.
    torch.manual_seed(3)
    sample = d.p_sample(_learned_model, x, t, cond_fn=cond_fn)["sample"]
    torch.manual_seed(3)
    noise = torch.randn_like(x).double().numpy()
    np.testing.assert_allclose(sample.numpy(), mean + np.exp(logvar) * grad + np.exp(0.5 * logvar) * noise, **TOL)

    step = d.ddim_reverse_sample(_learned_model, x, t)
    want = x0 * np.sqrt(ref.abar_next[t_val]) + np.sqrt(1 - ref.abar_next[t_val]) * ref.eps_from_x0(xn, t_val, x0)
    np.testing.assert_allclose(step["sample"].numpy(), want, **TOL)
    np.testing.assert_allclose(step["pred_xstart"].numpy(), x0, **TOL)
