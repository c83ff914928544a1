"""Gaussian diffusion (DDPM / improved-DDPM / DDIM), numerically equal to OpenAI guided-diffusion.

Timesteps are indices 0..T-1 ("t = 0" is the first noising step). Every schedule table is a
float64 numpy array; a per-step coefficient is looked up in float64 and only then cast to
float32 (see ``_extract_into_tensor``), because that is what the reference does and computing
the tables in float32 would shift samples by more than the parity tolerance.
"""
from __future__ import annotations

import enum
import math
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from .losses import discretized_gaussian_log_likelihood, normal_kl

Model = Callable[..., torch.Tensor]
DenoisedFn = Optional[Callable[[torch.Tensor], torch.Tensor]]


def get_named_beta_schedule(name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """Float64 betas for the "linear" (DDPM) or "cosine" (improved DDPM) schedule."""
    if name == "linear":
        # Scaled so that any T gives the same curve as the 1000-step DDPM schedule.
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        )
    raise ValueError(f"unknown beta schedule {name!r}; accepted names: 'linear', 'cosine'")


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Discretise a continuous cumulative-alpha function alpha_bar(s), s in [0, 1], into betas.

    Betas are capped at ``max_beta`` so that the last steps never become singular.
    """
    n = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.array(betas, dtype=np.float64)


class ModelMeanType(enum.Enum):
    """What the network's (first C output channels) predict."""

    PREVIOUS_X = enum.auto()  # the posterior mean of x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # the added noise


class ModelVarType(enum.Enum):
    """How the reverse-process variance is obtained."""

    LEARNED = enum.auto()  # extra channels are log-variances
    FIXED_SMALL = enum.auto()  # posterior variance
    FIXED_LARGE = enum.auto()  # betas (with the first entry set to the posterior variance)
    LEARNED_RANGE = enum.auto()  # extra channels interpolate between the two fixed choices


class LossType(enum.Enum):
    MSE = enum.auto()  # plain MSE (plus the VB term when the variance is learned)
    RESCALED_MSE = enum.auto()  # as MSE, with the VB term scaled by T/1000
    KL = enum.auto()  # the variational bound
    RESCALED_KL = enum.auto()  # the variational bound times T

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


def _extract_into_tensor(arr: np.ndarray, timesteps: torch.Tensor, broadcast_shape) -> torch.Tensor:
    """Look up ``arr[timesteps]`` in float64, cast to float32, broadcast to ``broadcast_shape``."""
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    while res.dim() < len(broadcast_shape):
        res = res[..., None]
    return res.expand(broadcast_shape)


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the batch dimension."""
    return x.mean(dim=list(range(1, x.dim())))


def _final_sample(steps: Iterator[dict]) -> torch.Tensor:
    """Run a progressive sampling loop to the end and return its last sample."""
    final = None
    for final in steps:
        pass
    return final["sample"]


def _nonzero_mask(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 where t != 0, shaped to broadcast over x: no noise is added on the final step."""
    return (t != 0).float().view(-1, *([1] * (x.dim() - 1)))


class GaussianDiffusion:
    """Forward process, reverse process, samplers and training losses for one beta schedule."""

    def __init__(
        self,
        *,
        betas: Sequence[float],
        model_mean_type: ModelMeanType,
        model_var_type: ModelVarType,
        loss_type: LossType,
        rescale_timesteps: bool = False,
    ):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # Posterior q(x_{t-1} | x_t, x_0).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0; reuse entry 1 so the log stays finite.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )

    # ----------------------------------------------------------------- forward process
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """(mean, variance, log_variance) of q(x_t | x_0)."""
        mean = _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = _extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = _extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None):
        """Draw x_t ~ q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x_start shape {tuple(x_start.shape)}")
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """(mean, variance, clipped log_variance) of q(x_{t-1} | x_t, x_0)."""
        mean = (
            _extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        variance = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        log_variance = _extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    # ----------------------------------------------------------------- reverse process
    def p_mean_variance(
        self,
        model: Model,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: DenoisedFn = None,
        model_kwargs: Optional[dict] = None,
    ) -> dict:
        """Run the model and return p(x_{t-1} | x_t): mean, variance, log_variance, pred_xstart."""
        B, C = x.shape[:2]
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
        out = model(x, self._scale_timesteps(t), **(model_kwargs or {}))

        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            if out.shape != (B, 2 * C, *x.shape[2:]):
                raise ValueError(f"learned variance needs {2 * C} output channels, got {tuple(out.shape)}")
            out, var_values = torch.split(out, C, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                log_variance = var_values
            else:
                # var_values in [-1, 1] interpolates (in log space) between the clipped
                # posterior variance and beta_t.
                min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
                max_log = _extract_into_tensor(np.log(self.betas), t, x.shape)
                frac = (var_values + 1) / 2
                log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            if self.model_var_type == ModelVarType.FIXED_LARGE:
                # beta_0 is tiny; use the posterior variance there for a better decoder NLL.
                var_table = np.append(self.posterior_variance[1], self.betas[1:])
                log_var_table = np.log(var_table)
            else:
                var_table, log_var_table = self.posterior_variance, self.posterior_log_variance_clipped
            variance = _extract_into_tensor(var_table, t, x.shape)
            log_variance = _extract_into_tensor(log_var_table, t, x.shape)

        def process_xstart(x0: torch.Tensor) -> torch.Tensor:
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x, t, out))
            mean = out
        else:
            if self.model_mean_type == ModelMeanType.START_X:
                pred_xstart = process_xstart(out)
            else:
                pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, out))
            # The mean comes from the (clipped) x_0 estimate, not from the raw output.
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def _predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def _predict_xstart_from_xprev(self, x_t: torch.Tensor, t: torch.Tensor, xprev: torch.Tensor):
        # Inverts the posterior mean: xprev = coef1 x_0 + coef2 x_t.
        return (
            _extract_into_tensor(1.0 / self.posterior_mean_coef1, t, x_t.shape) * xprev
            - _extract_into_tensor(self.posterior_mean_coef2 / self.posterior_mean_coef1, t, x_t.shape) * x_t
        )

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor):
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def _scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """What the model receives as its timestep: t, or t mapped onto [0, 1000) as float."""
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    def condition_mean(self, cond_fn: Callable, p_mean_var: dict, x, t, model_kwargs=None):
        """Classifier guidance for ancestral sampling: shift the mean by variance * grad log p(y|x)."""
        gradient = cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn: Callable, p_mean_var: dict, x, t, model_kwargs=None) -> dict:
        """Classifier guidance for DDIM: adjust the score (epsilon), then recompute x_0 and mean."""
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    # ----------------------------------------------------------------- samplers
    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None):
        """One ancestral step x_t -> x_{t-1}. Returns {"sample", "pred_xstart"}."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        # Drawn even at t == 0 (then masked) so the RNG stream matches the reference.
        noise = torch.randn_like(x)
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs=model_kwargs)
        sample = out["mean"] + _nonzero_mask(t, x) * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                      cond_fn=None, model_kwargs=None, device=None, progress=False) -> torch.Tensor:
        """Ancestral sampling from x_T (``noise`` or a fresh randn(shape)) down to x_0."""
        return _final_sample(self.p_sample_loop_progressive(
            model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device, progress
        ))

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  cond_fn=None, model_kwargs=None, device=None,
                                  progress=False) -> Iterator[dict]:
        """Yield each p_sample output from t = T-1 down to 0."""
        return self._loop(self.p_sample, model, shape, noise, device, progress, clip_denoised=clip_denoised,
                          denoised_fn=denoised_fn, cond_fn=cond_fn, model_kwargs=model_kwargs)

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None,
                    model_kwargs=None, eta=0.0):
        """One DDIM step x_t -> x_{t-1} (eta = 0: deterministic). Returns {"sample", "pred_xstart"}."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
        # Re-derive epsilon from the (possibly clipped) x_0 so both stay consistent.
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        alpha_bar_prev = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(
            1 - alpha_bar / alpha_bar_prev
        )
        # Drawn even when eta == 0 so the RNG stream matches the reference.
        noise = torch.randn_like(x)
        mean = out["pred_xstart"] * torch.sqrt(alpha_bar_prev)
        mean = mean + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        sample = mean + _nonzero_mask(t, x) * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None,
                            eta=0.0):
        """Deterministic DDIM inversion step x_t -> x_{t+1} (only eta = 0 is defined)."""
        if eta != 0.0:
            raise ValueError("ddim_reverse_sample is only defined for eta == 0")
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = _extract_into_tensor(self.alphas_cumprod_next, t, x.shape)
        sample = out["pred_xstart"] * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * eps
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                         cond_fn=None, model_kwargs=None, device=None, progress=False,
                         eta=0.0) -> torch.Tensor:
        """DDIM sampling from x_T (``noise`` or a fresh randn(shape)) down to x_0."""
        return _final_sample(self.ddim_sample_loop_progressive(
            model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device, progress, eta
        ))

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     cond_fn=None, model_kwargs=None, device=None, progress=False,
                                     eta=0.0) -> Iterator[dict]:
        """Yield each ddim_sample output from t = T-1 down to 0."""
        return self._loop(self.ddim_sample, model, shape, noise, device, progress, eta=eta,
                          clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
                          model_kwargs=model_kwargs)

    def _loop(self, step: Callable, model, shape, noise, device, progress, **step_kwargs) -> Iterator[dict]:
        """Shared sampling loop: x_T is ``noise`` or one randn(shape); then ``step`` for t = T-1 .. 0."""
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"shape must be a tuple or list, got {type(shape).__name__}")
        if device is None:
            # The model's device, else the given noise's (parameter-free models), else CPU.
            params = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
            device = next(params, noise if noise is not None else torch.empty(0)).device
        img = noise if noise is not None else torch.randn(*shape, device=device)
        indices = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices)
        for i in indices:
            t = torch.tensor([i] * shape[0], device=device)
            with torch.no_grad():
                out = step(model, img, t, **step_kwargs)
            yield out
            img = out["sample"]

    # ----------------------------------------------------------------- losses
    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None) -> dict:
        """One term of the variational bound in bits/dim: KL for t > 0, decoder NLL for t == 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = _mean_flat(decoder_nll) / math.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None) -> dict:
        """Per-example losses for timesteps t: {"loss", "mse"[, "vb"]} (or {"loss"} for KL losses)."""
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms: dict[str, Any] = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model, x_start, x_t, t, False, model_kwargs)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        out = model(x_t, self._scale_timesteps(t), **model_kwargs)
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            C = x_t.shape[1]
            out, var_values = torch.split(out, C, dim=1)
            # The VB term trains only the variance: the mean output is detached so that the
            # MSE term alone drives it (improved-DDPM "hybrid" objective).
            frozen = torch.cat([out.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(lambda *_, **__: frozen, x_start, x_t, t, False)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                # Keeps the VB term's weight independent of T (its sum over steps grows with T).
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        elif self.model_mean_type == ModelMeanType.START_X:
            target = x_start
        else:
            target = noise
        terms["mse"] = _mean_flat((target - out) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """KL(q(x_{T-1} | x_0) || N(0, I)) in bits/dim; not trainable, but part of the full bound."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, dtype=torch.long, device=x_start.device)
        mean, _, log_var = self.q_mean_variance(x_start, t)
        return _mean_flat(normal_kl(mean, log_var, 0.0, 0.0)) / math.log(2.0)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None) -> dict:
        """The full variational bound in bits/dim, plus per-step VB terms and x_0 / eps MSEs."""
        vb, xstart_mse, eps_mse = [], [], []
        for i in range(self.num_timesteps - 1, -1, -1):
            t = torch.tensor([i] * x_start.shape[0], device=x_start.device)
            noise = torch.randn_like(x_start)
            x_t = self.q_sample(x_start, t, noise=noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised, model_kwargs)
            vb.append(out["output"])
            xstart_mse.append(_mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            eps_mse.append(_mean_flat((eps - noise) ** 2))
        vb_t = torch.stack(vb, dim=1)
        prior_bpd = self._prior_bpd(x_start)
        return {
            "total_bpd": vb_t.sum(dim=1) + prior_bpd,
            "prior_bpd": prior_bpd,
            "vb": vb_t,
            "xstart_mse": torch.stack(xstart_mse, dim=1),
            "mse": torch.stack(eps_mse, dim=1),
        }
