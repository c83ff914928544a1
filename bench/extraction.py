"""Feature extraction throughput: ours (all steps and images in one U-Net forward that stops after
the last hooked block) vs the original (one step per forward, batch 1, the whole U-Net).

    python bench/extraction.py [--images 2] [--repeats 2] [--device cpu] [--quick]

Two workloads: 64 px with the faces checkpoint's flags (experiments/celebamask64/ddpm.json) and
256 px with the released LSUN flags, random weights (throughput does not depend on the weight
values). FLOPs are counted by torch.utils.flop_counter on the very calls that are timed, so
"achieved TFLOP/s" is what the hardware did; ``forward_tflop`` is one full batch-1 forward.
Prints one JSON line per workload. ``--quick``: one image, a narrow 128 px LSUN U-Net (CI test).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "src"), os.path.join(HERE, "..")]

from workloads import LSUN_FLAGS, train_config  # noqa: E402
from ddpmseg.features.ddpm import FeatureExtractorDDPM  # noqa: E402
from guided_diffusion.script_util import create_model_and_diffusion, merged_flags  # noqa: E402

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_unet(flags: dict, device: str, seed: int = 0):
    """A U-Net of ``flags`` with its (random) initial weights drawn from ``seed``, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, diffusion = create_model_and_diffusion(**merged_flags(flags, {"use_fp16": False}))
    return model.to(device).eval(), diffusion


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def autocast(device: str | torch.device, precision: str):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@torch.no_grad()
def original_features(model, diffusion, images: torch.Tensor, steps, blocks, noise: torch.Tensor) -> list:
    """The original's FeatureExtractorDDPM: per image, per step, one full forward of batch 1,
    forward hooks keeping the blocks' outputs."""
    acts: list[torch.Tensor] = []
    hooks = [model.output_blocks[b].register_forward_hook(lambda m, i, o: acts.append(o.detach().float()))
             for b in blocks]
    out = []
    try:
        for i in range(len(images)):
            for t in steps:
                acts.clear()
                tt = torch.tensor([t], device=images.device)
                model(diffusion.q_sample(images[i:i + 1], tt, noise=noise), diffusion._scale_timesteps(tt))
                out.extend(acts)
    finally:
        for h in hooks:
            h.remove()
    return out


def timed(fn, device: str, repeats: int, warmup: bool = True) -> float:
    """Best seconds of ``repeats`` calls of ``fn`` (after one untimed call if ``warmup``)."""
    if warmup:
        fn()
        sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def counted_flops(fn) -> int:
    """FLOPs of ``fn()`` counted by torch.utils.flop_counter (call it on meta tensors: shapes only)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def full_forward_flops(model, image_size: int) -> int:
    """FLOPs of one whole batch-1 forward (what the original pays per step), counted on meta."""
    meta = copy.deepcopy(model).to("meta")
    x = torch.zeros(1, 3, image_size, image_size, device="meta")
    with torch.no_grad():
        return counted_flops(lambda: meta(x, torch.zeros(1, dtype=torch.long, device="meta")))


def compare(model, diffusion, steps, blocks, num_images: int, device: str, repeats: int,
            precision: str = "fp32", channels_last: bool = False, original: tuple[float, int] | None = None,
            warmup: bool = True) -> dict:
    """Images/s and TFLOP/s of ours at ``precision``/``channels_last`` with all ``num_images``
    in one call, and of the original path (fp32, batch 1), measured now unless ``original``
    gives its (seconds per image, FLOPs per image) from an earlier call. FLOPs are counted on a
    meta-device copy of the same calls, so counting costs no compute."""
    size = model.image_size
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(num_images, 3, size, size, generator=g) * 2 - 1).to(device)
    noise = torch.randn(1, 3, size, size, generator=g).to(device)
    meta = copy.deepcopy(model).to("meta")
    meta_images, meta_noise = images.to("meta"), noise.to("meta")
    if original is None:
        original = (timed(lambda: original_features(model, diffusion, images[:1], steps, blocks, noise), device,
                          repeats, warmup),
                    counted_flops(lambda: original_features(meta, diffusion, meta_images[:1], steps, blocks,
                                                            meta_noise)))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    ext = FeatureExtractorDDPM(steps=steps, blocks=blocks, model=model, diffusion=diffusion, device=device)
    meta_ext = FeatureExtractorDDPM(steps=steps, blocks=blocks, model=meta, diffusion=diffusion, device="meta")
    x = images.contiguous(memory_format=fmt)
    try:
        def ours():
            with autocast(device, precision):
                return ext(x, noise=noise)
        t_ours = timed(ours, device, repeats, warmup)
        f_ours = counted_flops(lambda: meta_ext(meta_images, noise=meta_noise))
    finally:
        ext.close()
        model.to(memory_format=torch.contiguous_format)
    t_orig, f_orig = original
    return {"precision": precision, "channels_last": channels_last, "images": num_images,
            "ours_images_per_s": round(num_images / t_ours, 4), "original_images_per_s": round(1 / t_orig, 4),
            "speedup": round(t_orig * num_images / t_ours, 2),
            "ours_tflop_per_image": round(f_ours / num_images / 1e12, 4),
            "original_tflop_per_image": round(f_orig / 1e12, 4),
            "ours_tflop_per_s": round(f_ours / t_ours / 1e12, 4),
            "original_tflop_per_s": round(f_orig / t_orig / 1e12, 4), "_original": original}


def lsun_flags(quick: bool) -> dict:
    """The LSUN U-Net; --quick narrows it to 32 channels at 128 px (still 15 output blocks, so the
    bedroom config's block 12 exists)."""
    return {**LSUN_FLAGS, "num_channels": 32, "num_head_channels": 16, "image_size": 128} if quick else LSUN_FLAGS


def workloads(quick: bool) -> dict[str, dict]:
    """Model flags and hooked steps/blocks of each workload (the experiment configs' own)."""
    out = {}
    for name, flags in (("faces64", train_config("faces64")["model_flags"]), ("lsun256", lsun_flags(quick))):
        cfg = train_config(name)
        out[name] = {"flags": flags, "steps": cfg["steps"], "blocks": cfg["blocks"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2, help="images per call of ours")
    p.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up; the best counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workload", choices=["faces64", "lsun256"], nargs="+", default=["faces64", "lsun256"])
    p.add_argument("--no-warmup", action="store_true",
                   help="time the first call (a 256 px forward takes minutes on a CPU)")
    p.add_argument("--quick", action="store_true", help="one image, one repeat, a narrow 128 px LSUN U-Net")
    a = p.parse_args()
    if a.quick:
        a.images, a.repeats = 1, 1
    for name, w in workloads(a.quick).items():
        if name not in a.workload:
            continue
        model, diffusion = build_unet(w["flags"], a.device)
        row = compare(model, diffusion, w["steps"], w["blocks"], a.images, a.device, a.repeats,
                      warmup=not a.no_warmup)
        row.pop("_original")
        print(json.dumps({"bench": "extraction", "argv": sys.argv[1:], "workload": name, "quick": a.quick,
                          "device": a.device, "image_size": model.image_size, "steps": w["steps"],
                          "blocks": w["blocks"],
                          "forward_tflop": round(full_forward_flops(model, model.image_size) / 1e12, 4),
                          "torch_threads": torch.get_num_threads(), **row}), flush=True)


if __name__ == "__main__":
    main()
