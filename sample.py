"""Draw samples from a DDPM checkpoint: PNGs, one .npz and a grid.

    python sample.py --model_path RUN/ema_0.9999_010000.pt --out samples/ --num_samples 64 \\
        --use_ddim True --timestep_respacing ddim50
    torchrun --nproc_per_node=8 sample.py ...          # batches are spread over the processes

Model flags come from the checkpoint's json sidecar (written by train_ddpm.py), then
--model_flags FILE.json, then MODEL_FLAGS on the command line. Writes
<out>/samples_<N>x<H>x<W>x3.npz (arr_0, as guided-diffusion's image_sample.py),
<out>/images/<i>.png and <out>/grid.png; rerunning resumes an interrupted run.
"""
import argparse
import os
import sys

import numpy as np

from guided_diffusion.checkpoint import load_model_and_diffusion, sidecar_flags
from guided_diffusion.script_util import merged_flags
from ddpmseg.common.cli import (add_dataclass_args, add_model_flag_args, dataclass_from_args, passed_model_flags,
                         read_flags_file, run_cli)
from ddpmseg.common.distributed import init_world
from ddpmseg.ddpm.generate import SampleOptions, generate
from ddpmseg.common.report import image_grid, write_png_atomic
from ddpmseg.ddpm.sampling import sampling_diffusion

GRID_MAX = 64  # samples shown in grid.png


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model_flags", default=None, metavar="FILE.json", help="flags json (sidecar or flat dict)")
    p.add_argument("--device", default="auto")
    add_dataclass_args(p, SampleOptions, defaults={"num_samples": 16, "batch_size": 16})
    add_model_flag_args(p, "guided-diffusion model flags (timestep_respacing is the sampling option above)",
                        skip=["timestep_respacing"])
    return p.parse_args(argv)


def resolve_flags(args: argparse.Namespace) -> dict:
    from_file = read_flags_file(args.model_flags) if args.model_flags else None
    return merged_flags(sidecar_flags(args.model_path), from_file, passed_model_flags(args))


def draw(args: argparse.Namespace) -> None:
    opts = dataclass_from_args(SampleOptions, args)
    opts.validate()
    flags = resolve_flags(args)
    world = init_world(args.device)
    model, _ = load_model_and_diffusion(args.model_path, flags, world.device)
    diffusion = sampling_diffusion(flags, opts.timestep_respacing)
    size = flags["image_size"]
    name = f"samples_{opts.num_samples}x{size}x{size}x3.npz"
    path = generate(args.out, name, model, diffusion, size, opts, world,
                    record={"model_path": os.path.abspath(args.model_path)})
    if world.is_main:
        with np.load(path) as f:
            images = f["arr_0"]
        for i, img in enumerate(images):
            write_png_atomic(os.path.join(args.out, "images", f"{i:06d}.png"), img)
        write_png_atomic(os.path.join(args.out, "grid.png"), image_grid(images[:GRID_MAX]))
        print(f"{len(images)} samples: {path}, {args.out}/images/, {args.out}/grid.png")


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: draw(args))


if __name__ == "__main__":
    sys.exit(main())
