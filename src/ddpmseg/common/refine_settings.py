"""The mask refiner's settings (ddpmseg.classifier.refine): plain values, so the config can check them
without importing the refiner's network."""
from __future__ import annotations

from dataclasses import dataclass

# Refinement methods a config's "refine" value may name.
REFINE_METHODS = ("ddps",)


@dataclass
class RefineSettings:
    """Hyper-parameters of the refiner; every default is sized for ~20 images at 64 px on a CPU."""

    # DDPS's inference config uses T=20; fewer levels make each re-noising step coarser.
    num_timesteps: int = 20
    # Re-noising passes at inference. DDPS's inference config makes 2 after its first prediction;
    # in our checks 1 to 10 passes scored within half a point of each other, and 5 is cheap.
    steps: int = 5
    # Noise step the first prediction is re-noised to. None: (T-1)//2, i.e. alpha_bar ~ 0.53 at
    # T=20, the middle level DDPS re-noises to. Noisier starts discard more of the ensemble's
    # (mostly right) labels; cleaner ones leave the network little to fix.
    start_step: int | None = None
    # Base channel width of the U-Net (levels are width, 2*width, 2*width; 0.48 M parameters at
    # K=19): small enough for CPU training, wide enough to fit 20 images.
    width: int = 32
    # Size of the noisy-mask label embedding; DDPS uses 16.
    embed_dim: int = 16
    # Training updates: a few minutes on a CPU for 64 px images. On 25 labelled faces, 600 updates
    # scored no better on held-out faces than 300 and began to overfit.
    iterations: int = 300
    # Images per update: enough for a steady gradient from 20 images, few enough for fast CPU updates.
    batch_size: int = 8
    # Peak AdamW learning rate, decayed to zero by a cosine; higher than DDPS's 1.5e-4 because we
    # train for hundreds, not hundreds of thousands, of updates.
    learning_rate: float = 2e-3
    # DDPS's AdamW weight decay.
    weight_decay: float = 0.045
    # Add log(first_probs) to the network's output (its last layer starts at zero), so an untrained
    # refiner is the identity and training learns corrections. Not in DDPS, which has far more
    # labels: with 25 labelled faces, 300 updates without it lost 9-11 mIoU points against the
    # ensemble, with it under 1. False gives DDPS's plain "predict the clean mask" head.
    prior_residual: bool = True
    # Random horizontal flips (with left/right class swaps) double the few labelled images.
    hflip: bool = True
    # Seeds the weights, the batches, the noise and the flips: same seed, same refiner.
    seed: int = 0
    # The first predictions it trains on are out-of-fold (ddpmseg.classifier.crossfit): the training images in
    # this many folds, each predicted by an ensemble trained on the others. 4 folds of 20 images
    # train on 15, close to the test-time ensemble's 20.
    folds: int = 4
    # Members per fold ensemble: fewer than the main ensemble's to bound the extra training (the
    # refiner sees slightly noisier first predictions than the test images get).
    fold_members: int = 3

    def first_step(self) -> int:
        """The resolved ``start_step``."""
        return (self.num_timesteps - 1) // 2 if self.start_step is None else self.start_step

    def step_schedule(self) -> list[int]:
        """The ``steps`` distinct noise steps of inference, from ``first_step()`` linearly down to 0."""
        start = self.first_step()
        if self.steps == 1:
            return [start]
        return [round(start - i * start / (self.steps - 1)) for i in range(self.steps)]

    def validate(self) -> None:
        """Raise ValueError naming the first nonsensical value."""
        T = self.num_timesteps
        checks = [
            (isinstance(T, int) and T >= 2, f"num_timesteps must be an int >= 2, got {T!r}"),
            (isinstance(self.steps, int) and self.steps >= 1, f"steps must be an int >= 1, got {self.steps!r}"),
            (self.start_step is None or (isinstance(self.start_step, int) and 0 <= self.start_step < T),
             f"start_step must be None or an int in [0, {T - 1}] (num_timesteps={T}), got {self.start_step!r}"),
            (isinstance(self.width, int) and self.width >= 8, f"width must be an int >= 8, got {self.width!r}"),
            (isinstance(self.embed_dim, int) and self.embed_dim >= 1,
             f"embed_dim must be an int >= 1, got {self.embed_dim!r}"),
            (isinstance(self.iterations, int) and self.iterations >= 1,
             f"iterations must be an int >= 1, got {self.iterations!r}"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch_size must be an int >= 1, got {self.batch_size!r}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate!r}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}"),
            (isinstance(self.prior_residual, bool), f"prior_residual must be a bool, got {self.prior_residual!r}"),
            (isinstance(self.hflip, bool), f"hflip must be a bool, got {self.hflip!r}"),
            (isinstance(self.seed, int), f"seed must be an int, got {self.seed!r}"),
            (isinstance(self.folds, int) and self.folds >= 2, f"folds must be an int >= 2, got {self.folds!r}"),
            (isinstance(self.fold_members, int) and self.fold_members >= 1,
             f"fold_members must be an int >= 1, got {self.fold_members!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"RefineSettings: {msg}")
        # Checked last: it needs a valid start_step. Distinct steps need enough levels below it.
        if self.steps > self.first_step() + 1:
            raise ValueError(f"RefineSettings: steps={self.steps} distinct noise steps do not fit in "
                             f"[0, start_step={self.first_step()}]; lower steps or raise start_step")
