"""Model flags come from the checkpoint's json sidecar (written by `ddpmseg train-ddpm`), then
--model_flags FILE.json, then MODEL_FLAGS on the command line. Writes
<out>/samples_<N>x<H>x<W>x3.npz (arr_0, as guided-diffusion's image_sample.py),
<out>/images/<i>.png and <out>/grid.png; --out has no default. Rerunning resumes an interrupted
run; under torchrun the batches are spread over the processes.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from guided_diffusion.checkpoint import load_model_and_diffusion, sidecar_flags
from guided_diffusion.script_util import merged_flags

from ..common.cli import (add_dataclass_args, add_model_flag_args, add_shared_option, dataclass_from_args,
                          passed_model_flags, read_flags_file, run_cli)
from ..common.config import ConfigError
from ..common.distributed import init_world
from ..common.paths import probe_output_dir
from ..common.report import image_grid, write_png_atomic
from ..ddpm.generate import SampleOptions, generate
from ..ddpm.sampling import diffusion_sampler, sampling_diffusion
from . import command_parser

EXAMPLE = ("  ddpmseg sample --model_path RUN/ema_0.9999_010000.pt --out samples/ --num_samples 64 \\\n"
           "      --use_ddim True --timestep_respacing ddim50\n"
           "  torchrun --nproc_per_node=8 -m ddpmseg sample ...\n")
GRID_MAX = 64  # samples shown in grid.png


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = command_parser("sample", __doc__, EXAMPLE, prog)
    p.add_argument("--model_path", required=True, help="guided-diffusion checkpoint")
    add_shared_option(p, "--out", required=True)
    p.add_argument("--model_flags", default=None, metavar="FILE.json", help="flags json (sidecar or flat dict)")
    add_shared_option(p, "--device")
    add_dataclass_args(p, SampleOptions, defaults={"num_samples": 16, "batch_size": 16})
    add_model_flag_args(p, "guided-diffusion model flags (timestep_respacing is the sampling option above)",
                        skip=["timestep_respacing"])
    return p


def resolve_flags(args: argparse.Namespace) -> dict:
    recorded = sidecar_flags(args.model_path)
    from_file = read_flags_file(args.model_flags) if args.model_flags else None
    flags = merged_flags(recorded, from_file, passed_model_flags(args))
    trained = recorded.get("image_size")
    if trained is not None and flags["image_size"] != trained:
        # The default channel_mult and the attention layers follow image_size: another size is another U-Net.
        raise ConfigError(f"image_size {flags['image_size']} (--image_size or --model_flags), but {args.model_path} "
                          f"was trained at {trained} px (image_size in its .json beside it): drop that "
                          f"image_size, or give {trained}")
    return flags


def draw(args: argparse.Namespace) -> None:
    opts = dataclass_from_args(SampleOptions, args)
    opts.validate()
    flags = resolve_flags(args)
    world = init_world(args.device or "auto")
    if world.is_main:  # one prober: another rank's probe could remove the folder under this one's
        probe_output_dir(args.out, "--out")
    diffusion = sampling_diffusion(flags, opts.timestep_respacing)  # a respacing it cannot take, said first
    model, _ = load_model_and_diffusion(args.model_path, flags, world.device)
    size = flags["image_size"]
    name = f"samples_{opts.num_samples}x{size}x{size}x3.npz"
    sampler = diffusion_sampler(model, diffusion, size, opts.seed, opts.use_ddim, opts.clip_denoised, world.device)
    path = generate(args.out, name, sampler, size, opts, world,
                    record={"model_path": os.path.abspath(args.model_path)})
    if world.is_main:
        with np.load(path) as f:
            images = f["arr_0"]
        for i, img in enumerate(images):
            write_png_atomic(os.path.join(args.out, "images", f"{i:06d}.png"), img)
        write_png_atomic(os.path.join(args.out, "grid.png"), image_grid(images[:GRID_MAX]))
        print(f"{len(images)} samples: {path}, {args.out}/images/, {args.out}/grid.png")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    return run_cli(lambda: draw(args))
