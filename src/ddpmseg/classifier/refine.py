"""Mask-prior refinement of the pixel ensemble's prediction, after DDPS (Lai et al., arXiv 2306.01721).

A small conditional U-Net learns p(clean mask | image, first prediction, noisy mask x_t). Masks are
categorical: the forward process keeps each pixel's label with probability alpha_bar[step] and
otherwise redraws it uniformly over the K classes.

* Training ("diffusion on the first prediction"): the mask that gets noised is the ensemble's
  argmax, not the ground truth, and the loss is cross-entropy against the ground truth. The
  network thus learns to correct the ensemble's own mistakes instead of denoising a corrupted GT,
  which it would never see at test time.
* Inference ("free re-noising"): re-noise the current argmax from scratch to the next, lower noise
  step, predict again, and repeat; the previous x_t is thrown away.

Noise step 0 is the least noise (alpha_bar ~ 1) and step T-1 the most (alpha_bar ~ 0).

Unlike DDPS, the network also sees the first prediction's probabilities un-noised, and by default
adds their log to its output (``prior_residual``), so with few labels it learns corrections to
the ensemble rather than a segmenter from scratch.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, fields
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..common.atomic import torch_save_atomic
from ..data.augment import class_permutation, swap_classes
from ..common.refine_settings import RefineSettings
from ..common.seeding import stream_generator

CHECKPOINT_FORMAT = "ddpmseg-refiner-v1"  # tells a refiner file apart from any other torch file
# Floor of the first prediction's probabilities in the log-prior: ensemble votes can be exactly 0,
# and capping the penalty at ~6.9 nats keeps a confident mistake within the network's reach.
PRIOR_FLOOR = 1e-3
ALPHA_BAR_FIRST, ALPHA_BAR_LAST = 0.99999, 0.000009  # DDPS's linear schedule endpoints


class CategoricalSchedule:
    """DDPS's linear categorical schedule: alpha_bar falls from 0.99999 (step 0) to 0.000009 (step T-1)."""

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps
        self.alpha_bar = torch.linspace(ALPHA_BAR_FIRST, ALPHA_BAR_LAST, num_timesteps, dtype=torch.float64)

    def q_sample(self, x0: torch.Tensor, step: torch.Tensor, num_classes: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t ~ q(x_t | x0): each pixel of x0 [N, H, W] keeps its label with prob alpha_bar[step[n]],
        else gets a uniformly drawn class (which may be the same one)."""
        # Draw on the generator's device so a CPU generator can drive a GPU model, then move.
        rng_device = generator.device if generator is not None else x0.device
        keep_u = torch.rand(x0.shape, generator=generator, device=rng_device)
        redraw = torch.randint(0, num_classes, x0.shape, generator=generator, device=rng_device)
        alpha = self.alpha_bar.to(rng_device)[step.to(rng_device)].float().view(-1, 1, 1)
        keep = (keep_u < alpha).to(x0.device)
        return torch.where(keep, x0, redraw.to(x0.device))


def timestep_embedding(step: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features [N, dim] of the noise step index, as in the DDPM U-Net."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=step.device) / half)
    args = step.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    # Up to 8 groups, always a divisor of the width; GroupNorm ignores the batch, so a batch of one
    # at inference behaves exactly like training.
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding as a scale-shift after the second norm."""

    def __init__(self, cin: int, cout: int, time_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.conv2(F.silu(h)) + self.skip(x)


class MaskDenoiser(nn.Module):
    """Three-level U-Net: (image, first-prediction probabilities, embedded x_t, step) -> clean-mask logits.

    With ``prior_residual`` the logits are the network's output plus log(first_probs), and the
    output layer starts at zero, so the untrained model returns the first prediction.
    """

    def __init__(self, num_classes: int, width: int = 32, embed_dim: int = 16, prior_residual: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.num_classes, self.prior_residual = num_classes, prior_residual
        # The layers' constructors draw their default init from the global RNG; fork it so that
        # building a model leaves it as it was (reset_parameters redraws from ``generator``).
        with torch.random.fork_rng(devices=[]):
            self._build(num_classes, width, embed_dim)
        self.reset_parameters(generator)

    def _build(self, num_classes: int, width: int, embed_dim: int) -> None:
        w, tdim = width, 4 * width
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.time_mlp = nn.Sequential(nn.Linear(w, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inp = nn.Conv2d(3 + num_classes + embed_dim, w, 3, padding=1)
        self.enc0 = ResBlock(w, w, tdim)
        self.down0 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.enc1 = ResBlock(2 * w, 2 * w, tdim)
        self.down1 = nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * w, 2 * w, tdim)
        self.dec1 = ResBlock(4 * w, 2 * w, tdim)
        self.dec0 = ResBlock(3 * w, w, tdim)
        self.out = nn.Sequential(_norm(w), nn.SiLU(), nn.Conv2d(w, num_classes, 1))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default init, but drawn from ``generator`` so a seed fixes the weights."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, generator=generator)
        if self.prior_residual:
            nn.init.zeros_(self.out[-1].weight)
            nn.init.zeros_(self.out[-1].bias)

    def forward(self, x_t: torch.Tensor, image: torch.Tensor, first_probs: torch.Tensor,
                step: torch.Tensor) -> torch.Tensor:
        """x_t [N, H, W] long, image [N, 3, H, W] in [-1, 1], first_probs [N, K, H, W],
        step [N] long -> logits [N, K, H, W]."""
        temb = self.time_mlp(timestep_embedding(step, self.time_mlp[0].in_features))
        x = torch.cat([image, first_probs, self.embed(x_t).permute(0, 3, 1, 2)], dim=1)
        h0 = self.enc0(self.inp(x), temb)
        h1 = self.enc1(self.down0(h0), temb)
        h = self.mid(self.down1(h1), temb)
        # Upsample to the skip's exact size, so odd heights and widths work too.
        h = self.dec1(torch.cat([F.interpolate(h, size=h1.shape[-2:]), h1], dim=1), temb)
        h = self.dec0(torch.cat([F.interpolate(h, size=h0.shape[-2:]), h0], dim=1), temb)
        logits = self.out(h)
        if self.prior_residual:
            logits = logits + torch.log(first_probs.clamp_min(PRIOR_FLOOR))
        return logits


def hflip_sample(image: torch.Tensor, first_probs: torch.Tensor, labels: torch.Tensor,
                 flip_pairs: Sequence[Sequence[int]] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mirror (image [.., 3, H, W], first_probs [.., K, H, W], labels [.., H, W]) together.

    A mirrored left eye is a right eye, so the paired class ids trade places in the labels and the
    paired channels trade places in the probabilities; otherwise flips would teach contradictions.
    """
    perm = class_permutation(first_probs.shape[-3], flip_pairs).to(first_probs.device)
    probs = first_probs.flip(-1).index_select(-3, perm)
    return image.flip(-1), probs, swap_classes(labels.flip(-1), flip_pairs)


def _check_flip_pairs(flip_pairs: Sequence[Sequence[int]], num_classes: int) -> None:
    ids = [i for p in flip_pairs for i in p]
    if not all(len(p) == 2 for p in flip_pairs) or len(set(ids)) != len(ids) or \
            not all(0 <= i < num_classes for i in ids):
        raise ValueError(f"flip_pairs must be [a, b] pairs of distinct class ids in [0, {num_classes - 1}], "
                         f"got {flip_pairs!r}")


def _check_training_inputs(images: torch.Tensor, first_probs: torch.Tensor, labels: torch.Tensor,
                           num_classes: int, ignore_index: int) -> None:
    """Raise ValueError if the shapes disagree or a label is neither a class nor ``ignore_index``."""
    if images.dim() != 4 or images.shape[1] != 3 or \
            first_probs.shape[:1] + first_probs.shape[2:] != images.shape[:1] + images.shape[2:] or \
            first_probs.shape[1] != num_classes or labels.shape != first_probs.shape[:1] + first_probs.shape[2:]:
        raise ValueError(f"shapes disagree: images {tuple(images.shape)}, first_probs {tuple(first_probs.shape)}, "
                         f"labels {tuple(labels.shape)}, num_classes {num_classes}")
    bad = labels[(labels != ignore_index) & ((labels < 0) | (labels >= num_classes))]
    if bad.numel():
        raise ValueError(f"labels hold {bad[0].item()}, neither a class id in [0, {num_classes - 1}] "
                         f"nor ignore_index={ignore_index}")


def _random_batch(images: torch.Tensor, first_probs: torch.Tensor, labels: torch.Tensor, settings: RefineSettings,
                  flip_pairs: Sequence[Sequence[int]], gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One update's (images, first probabilities, labels): a random batch, each sample flipped with
    probability 1/2 when ``settings.hflip``."""
    n = images.shape[0]
    idx = torch.randint(0, n, (min(settings.batch_size, n),), generator=gen)
    img, probs, lab = images[idx], first_probs[idx], labels[idx]
    if settings.hflip:
        flip = torch.rand(len(idx), generator=gen) < 0.5
        f_img, f_probs, f_lab = hflip_sample(img, probs, lab, flip_pairs)
        img = torch.where(flip[:, None, None, None], f_img, img)
        probs = torch.where(flip[:, None, None, None], f_probs, probs)
        lab = torch.where(flip[:, None, None], f_lab, lab)
    return img, probs, lab


def train_refiner(images: torch.Tensor, first_probs: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  ignore_index: int, settings: RefineSettings, flip_pairs: Sequence[Sequence[int]] = (),
                  device: str | torch.device = "cpu",
                  log: Callable[[str], None] = print) -> tuple[MaskDenoiser, dict]:
    """Train a MaskDenoiser on (images [N, 3, H, W] in [-1, 1], first_probs [N, K, H, W],
    labels [N, H, W] long with ``ignore_index`` for unlabelled pixels).

    ``first_probs`` should carry the mistakes the ensemble makes on unseen images, e.g. out-of-fold
    predictions: on its own training images the ensemble is nearly right, and a refiner trained
    on those learns to copy it.
    Each update noises the first prediction's argmax of a random batch at a random step and
    minimises cross-entropy against the labels. Returns (model in eval mode, stats with
    "final_loss" (mean of the last 50 updates), "seconds" and "iterations").
    """
    settings.validate()
    _check_flip_pairs(flip_pairs, num_classes)
    _check_training_inputs(images, first_probs, labels, num_classes, ignore_index)
    # All randomness (weights, batches, steps, noise, flips) comes from this one CPU generator, so
    # a seed gives the same refiner on any device and the global RNG is left alone.
    gen = stream_generator("refiner_training", settings.seed)
    model = MaskDenoiser(num_classes, settings.width, settings.embed_dim, settings.prior_residual, gen).to(device)
    schedule = CategoricalSchedule(settings.num_timesteps)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    # Cosine decay to zero: a short run still ends on small, settled updates.
    lr_at = lambda i: 0.5 * (1 + math.cos(math.pi * i / settings.iterations))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    images, first_probs, labels = images.float().cpu(), first_probs.float().cpu(), labels.long().cpu()

    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(settings.iterations), dynamic_ncols=True, desc="refiner")
    for _ in bar:
        img, probs, lab = _random_batch(images, first_probs, labels, settings, flip_pairs, gen)
        step = torch.randint(0, settings.num_timesteps, (len(img),), generator=gen)
        # Diffusion on the first prediction: noise what the ensemble said, supervise with the truth.
        x_t = schedule.q_sample(probs.argmax(1), step, num_classes, gen)
        logits = model(x_t.to(device), img.to(device), probs.to(device), step.to(device))
        loss = F.cross_entropy(logits, lab.to(device), ignore_index=ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    bar.close()
    stats = {"final_loss": sum(losses[-50:]) / len(losses[-50:]), "seconds": time.perf_counter() - start,
             "iterations": settings.iterations}
    log(f"refiner: {settings.iterations} updates in {stats['seconds']:.1f} s, final loss {stats['final_loss']:.4f}")
    return model.eval(), stats


@torch.no_grad()
def refine(model: MaskDenoiser, image: torch.Tensor, first_probs: torch.Tensor, settings: RefineSettings,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Free re-noising from the first prediction; returns (final softmax probs [N, K, H, W], the argmax
    mask [N, H, W] after each step of ``settings.step_schedule()``).

    The whole batch goes through at once, so callers chunk large test sets. ``generator`` (CPU)
    drives the noise; None means the "refine_noise" stream of image 0 for ``settings.seed``, so
    repeated calls agree.
    """
    settings.validate()
    model.eval()
    device = next(model.parameters()).device
    gen = generator if generator is not None else stream_generator("refine_noise", settings.seed, 0)
    schedule = CategoricalSchedule(settings.num_timesteps)
    image, first_probs = image.float().to(device), first_probs.float().to(device)
    x0 = first_probs.argmax(1)
    masks: list[torch.Tensor] = []
    for s in settings.step_schedule():
        step = torch.full((x0.shape[0],), s, dtype=torch.long)
        # Re-noise the current estimate from scratch; the previous x_t plays no further part.
        x_t = schedule.q_sample(x0.cpu(), step, model.num_classes, gen).to(device)
        logits = model(x_t, image, first_probs, step.to(device))
        x0 = logits.argmax(1)
        masks.append(x0.cpu())
    return logits.softmax(1), masks


def save_refiner(model: MaskDenoiser, settings: RefineSettings, num_classes: int, path: str) -> None:
    """Write weights, settings and class count to ``path`` atomically (never a half-written file)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch_save_atomic({"format": CHECKPOINT_FORMAT, "state_dict": state, "settings": asdict(settings),
                       "num_classes": num_classes}, path)


def load_refiner(path: str, device: str | torch.device = "cpu") -> tuple[MaskDenoiser, RefineSettings]:
    """Read a ``save_refiner`` file; ValueError if it is missing or not a refiner checkpoint."""
    if not os.path.isfile(path):
        raise ValueError(f"refiner checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling or format failure means "not our file"
        raise ValueError(f"{path} is not a readable refiner checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a refiner checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    known = {f.name for f in fields(RefineSettings)}
    try:
        settings = RefineSettings(**{k: v for k, v in ckpt["settings"].items() if k in known})
        settings.validate()
        model = MaskDenoiser(ckpt["num_classes"], settings.width, settings.embed_dim, settings.prior_residual)
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is a damaged refiner checkpoint: {e}") from e
    return model.to(device).eval(), settings


def refine_settings(config_value: dict, seed: int) -> RefineSettings | None:
    """The RefineSettings of a validated config ``refine`` value (None: no refinement)."""
    if not config_value:
        return None
    return RefineSettings(**{k: v for k, v in config_value.items() if k != "method"}, seed=seed)
