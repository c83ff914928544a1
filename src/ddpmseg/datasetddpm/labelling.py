"""DatasetDDPM's first stage: samples of a finished interpreter run's U-Net, labelled by its ensemble.

The samples are drawn and saved by ddpmseg.ddpm.generate (sharded, resumable, the same images on any
number of processes); this module adds the labels: each sample's mask under the run's voting and
test-time views, and the image uncertainty DeepLab's filter ranks by.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..common.config import ConfigError
from ..common.distributed import World
from ..common.paths import probe_output_dir
from ..ddpm.generate import Labeller, SampleOptions, generate
from ..classifier.interpreter import Run, load_trained_config
from ..classifier.predict import image_uncertainty
from ..classifier.predictor import Predictor
from ..features.registry import REGISTRY, backbone_class
from ..common.report import synthetic_grid, write_png_atomic
from ..ddpm.sampling import BatchSampler, diffusion_sampler, sampling_diffusion, scheduler_sampler, scheduler_steps


def ensemble_labeller(run: Run, run_dir: str) -> Labeller:
    """Label samples as the run in ``run_dir`` labels its test images: the U-Net features of the sample (the
    float sample, before uint8 rounding, as the original), the trained ensemble, the run's
    voting and test-time views. Adds "masks" (uint8 when the classes fit) and "uncertainty"
    (the image score that DeepLab's filter ranks by)."""
    c = run.cfg
    predictor = Predictor.load(c, run.backbone, run_dir, run.device)
    dtype = np.uint8 if c["number_class"] <= 256 else np.int16

    def label(x: torch.Tensor) -> dict[str, np.ndarray]:
        masks, scores = [], []
        for i, image in enumerate(x):
            votes = predictor.votes(image, i)
            masks.append(votes.mask(c["voting"]).reshape(run.hw).cpu().numpy().astype(dtype))
            scores.append(image_uncertainty(votes.uncertainty(), c["uncertainty_top_fraction"]))
        return {"masks": np.stack(masks), "uncertainty": np.asarray(scores, dtype=np.float64)}

    return label


def backbone_sampler(run: Run, opts: SampleOptions, world: World) -> BatchSampler:
    """The sampler of the run's backbone: its own scheduler loop, or guided-diffusion's with the run's flags."""
    if run.backbone.samples_with_own_scheduler:
        return scheduler_sampler(run.backbone.sample, opts.seed, opts.timestep_respacing, opts.use_ddim,
                                 opts.clip_denoised)
    return diffusion_sampler(run.backbone.sampling_network(), sampling_diffusion(run.flags, opts.timestep_respacing),
                             run.size, opts.seed, opts.use_ddim, opts.clip_denoised, world.device)


def generate_labelled_set(run_dir: str, out_dir: str, opts: SampleOptions, world: World,
                          log: Callable[[str], None] = tqdm.write) -> str:
    """DatasetDDPM from the finished interpreter run in ``run_dir``: its U-Net samples, its
    ensemble labels; writes ``samples_<S>x<S>x3.npz`` and ``synthetic_grid.png`` to ``out_dir``."""
    opts.validate()
    cfg = load_trained_config(run_dir, {"device": str(world.device)})
    if not backbone_class(cfg["model_type"]).can_sample:  # said before the backbone is loaded
        samplers = " or ".join(f"'{t}'" for t, cls in REGISTRY.items() if cls.can_sample)
        raise ConfigError(f"{run_dir} is a model_type '{cfg['model_type']}' run, which has no sampler to draw "
                          f"samples with: give the folder of a model_type {samplers} run")
    # A spacing the sampler cannot take, said before the backbone is loaded.
    if backbone_class(cfg["model_type"]).samples_with_own_scheduler:
        scheduler_steps(opts.timestep_respacing)
    else:
        sampling_diffusion(cfg["model_flags"], opts.timestep_respacing)
    if world.is_main:  # one prober: another rank's probe could remove the folder under this one's
        probe_output_dir(out_dir, "--out")
    run = Run(cfg, cfg["model_flags"], log, train=False)
    path = generate(out_dir, f"samples_{run.size}x{run.size}x3.npz", backbone_sampler(run, opts, world), run.size,
                    opts, world, record={"run": os.path.abspath(run_dir)}, labeller=ensemble_labeller(run, run_dir),
                    log=log)
    if world.is_main:
        with np.load(path) as f:
            images, masks, uncertainty = f["arr_0"], f["arr_1"], f["arr_2"]
        grid = synthetic_grid(images, masks, run.cfg["palette"], class_names=run.cfg["class_names"])
        write_png_atomic(os.path.join(out_dir, "synthetic_grid.png"), grid)
        log(f"{len(images)} labelled samples, mean uncertainty {uncertainty.mean():.4f}: {path}")
    return path
