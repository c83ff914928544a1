"""Everything this project has never run on a GPU, in one command (about 5-8 minutes on one GPU).

    python bench/gpu_suite.py                       # on a CUDA machine
    python bench/gpu_suite.py --quick --device cpu  # the same code on tiny shapes (the CI test)

Prints one JSON line per measurement, each with its section, the peak GPU memory it took
(``peak_gpu_mib``, null on CPU) and the device's name:

- ``parity``: the device against float32 on the CPU. U-Net output in float32 (pass at <= 1e-4,
  with TF32 off; the TF32 error is reported beside it), float16 and bfloat16 autocast and the
  original's ``use_fp16`` torso (max errors reported); the hooked activations of
  FeatureExtractorDDPM; one ensemble training step (loss, gradients, weights); the logits and
  masks of a small trained ensemble.
- ``extraction``: images/s of FeatureExtractorDDPM at 256 px with the LSUN flags (random
  weights) for fp32/fp16/bf16 x channels_last x batch sizes, against the original path (one
  step per forward, batch 1, whole U-Net), with achieved TFLOP/s (FLOPs counted on the timed call).
- ``ensemble``: training pixels/s of 10 members at 8448-d: our batched train_ensemble, a
  per-member loop of it, and the original loop; then the bare step eager vs torch.compile
  (with and without CUDA graphs), the fastest reported as ``chosen``.
- ``ddpm``: DDPMTrainer updates/s at 64 px with the faces flags (fp32 and bf16) and DDIM-50
  sampling images/s.

Needs torch, torchvision, numpy, PIL and tqdm only, not the package installed
(``PYTHONPATH=.:src python3 bench/gpu_suite.py``); timm and blobfile are never imported. Exit status 1 if any parity check fails or a section
raises (its error is printed as a JSON line and the other sections still run).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "src"), os.path.join(HERE, "..")]
try:
    import torchvision  # noqa: F401  (ddpmseg's config validation and data loading import it)
except ImportError:
    print("error: bench/gpu_suite.py needs torchvision beside torch (ddpmseg's config validation and data "
          "loading import it); install the torchvision that matches your torch", file=sys.stderr)
    sys.exit(2)

from ensemble_throughput import sequential  # noqa: E402
from extraction import build_unet, compare, full_forward_flops, lsun_flags, sync  # noqa: E402
from workloads import synthetic_store, train_config  # noqa: E402
from ddpmseg.ddpm.train import DDPMTrainer, DDPMTrainOptions  # noqa: E402
from ddpmseg.classifier.ensemble import PixelEnsemble  # noqa: E402
from ddpmseg.features.ddpm import FeatureExtractorDDPM  # noqa: E402
from ddpmseg.classifier.predict import Votes, ensemble_logits  # noqa: E402
from ddpmseg.ddpm.sampling import sample_batch, sampling_diffusion  # noqa: E402
from ddpmseg.classifier.train import (EnsembleSettings, load_ensemble, make_optimizer, member_generator,  # noqa: E402
                           per_member_ce, train_ensemble)

FP32_TOL = 1e-4  # the project's parity standard (U-Net, diffusion, features vs fixtures)
STEPS = [50, 150, 250]  # the published feature timesteps


class Suite:
    """Prints JSON lines; remembers failures for the exit status."""

    def __init__(self, device: str, quick: bool, out: str | None):
        self.device, self.quick = torch.device(device), quick
        self.cuda = self.device.type == "cuda"
        self.gpu = torch.cuda.get_device_name(self.device) if self.cuda else None
        self.failed: list[str] = []
        self.out = open(out, "a") if out else None

    def emit(self, section: str, **row) -> None:
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None
        line = json.dumps({"bench": "gpu_suite", "section": section, **row, "device": str(self.device),
                           "gpu": self.gpu, "quick": self.quick,
                           "peak_gpu_mib": None if peak is None else round(peak, 1)})
        print(line, flush=True)
        if self.out:
            self.out.write(line + "\n")
            self.out.flush()
        if row.get("passed") is False:
            self.failed.append(f"{section}/{row.get('check')}")

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def run(self, section: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # one broken section must not hide the others' numbers
            self.emit(section, check="error", passed=False, error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc(limit=4))
        print(json.dumps({"bench": "gpu_suite", "section": section, "seconds": round(time.perf_counter() - t0, 1)}),
              file=sys.stderr, flush=True)


@contextlib.contextmanager
def no_tf32():
    """Full float32 matmuls and convolutions (CUDA defaults let cuDNN convolutions use TF32)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """The fixtures' weight rule (tests/conftest.rule_weights): every parameter from its own
    name-seeded stream, norm scales near 1, the rest N(0, 0.05). A fresh U-Net's zero-initialised
    output layers would make every output 0 and every parity check pass trivially."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            v = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * v if (p.dim() == 1 and name.endswith("weight")) else 0.05 * v)
    return model


def max_err(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |a - ref|, that divided by max |ref|)."""
    err = (a.detach().float().cpu() - ref.float()).abs().max().item()
    return err, err / max(ref.abs().max().item(), 1e-30)


# --- parity --------------------------------------------------------------------------------------
def parity(s: Suite) -> None:
    flags = lsun_flags(s.quick)
    cpu_model, diffusion = build_unet(flags, "cpu")
    randomize(cpu_model)
    dev_model = copy.deepcopy(cpu_model).to(s.device)
    size = flags["image_size"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(len(STEPS), 3, size, size, generator=g) * 2 - 1
    t = torch.tensor(STEPS)
    with torch.no_grad():
        ref = cpu_model(x, t)
        s.reset_peak()
        with no_tf32():
            out = dev_model(x.to(s.device), t.to(s.device))
        err, rel = max_err(out, ref)
        s.emit("parity", check="unet_fp32", max_abs_err=err, rel_err=rel, tol=FP32_TOL, passed=err <= FP32_TOL)
        if s.cuda:
            s.reset_peak()
            err, rel = max_err(dev_model(x.to(s.device), t.to(s.device)), ref)
            s.emit("parity", check="unet_tf32_default", max_abs_err=err, rel_err=rel,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            s.reset_peak()
            with torch.autocast(s.device.type, dtype=dtype):
                out = dev_model(x.to(s.device), t.to(s.device))
            err, rel = max_err(out, ref)
            s.emit("parity", check=f"unet_{name}_autocast", max_abs_err=err, rel_err=rel)
        s.reset_peak()
        half = copy.deepcopy(dev_model)
        half.convert_to_fp16()  # the original's use_fp16 torso
        err, rel = max_err(half(x.to(s.device), t.to(s.device)), ref)
        s.emit("parity", check="unet_use_fp16_torso", max_abs_err=err, rel_err=rel)
        del half

    # Hooked activations: the bedroom config's blocks, one image, the published shared noise.
    blocks = train_config("lsun256")["blocks"]
    noise = torch.randn(1, 3, size, size, generator=g)
    ref_acts = FeatureExtractorDDPM(steps=STEPS, blocks=blocks, model=cpu_model, diffusion=diffusion)(x[:1], noise)
    s.reset_peak()
    with no_tf32():
        acts = FeatureExtractorDDPM(steps=STEPS, blocks=blocks, model=dev_model, diffusion=diffusion,
                                    device=s.device)(x[:1].to(s.device), noise.to(s.device))
    err = max(max_err(a, r)[0] for a, r in zip(acts, ref_acts))
    s.emit("parity", check="hooked_activations_fp32", layers=len(acts), max_abs_err=err, tol=FP32_TOL,
           passed=len(acts) == len(ref_acts) and err <= FP32_TOL)
    del cpu_model, dev_model, acts, ref_acts
    ensemble_parity(s)


def ensemble_step(ens: PixelEnsemble, x: torch.Tensor, y: torch.Tensor, settings: EnsembleSettings
                  ) -> tuple[torch.Tensor, list]:
    """One training step as train_ensemble takes it: loss, gradients (before the update)."""
    opt = make_optimizer(list(ens.parameters()), settings)
    ens.train()
    losses = per_member_ce(ens(x), y)
    opt.zero_grad(set_to_none=True)
    losses.sum().backward()
    grads = [p.grad.detach().clone() for p in ens.parameters()]
    opt.step()
    return losses.detach(), grads


def ensemble_parity(s: Suite) -> None:
    settings = EnsembleSettings.from_config(train_config("faces64"))
    M, B, K = 10, settings.batch_size, settings.number_class
    store, pixels = synthetic_store("faces64", 1)
    idx = torch.arange(M * B) % len(pixels.labels)
    x = store.pixels(*pixels.coords(idx)).reshape(M, B, store.dim)
    y = pixels.labels[idx].reshape(M, B)
    gens = lambda: [member_generator(0, m) for m in range(M)]  # noqa: E731
    cpu_ens = PixelEnsemble(M, store.dim, K, generators=gens())
    dev_ens = PixelEnsemble(M, store.dim, K, generators=gens()).to(s.device)
    ref_loss, ref_grads = ensemble_step(cpu_ens, x, y, settings)
    s.reset_peak()
    with no_tf32():
        loss, grads = ensemble_step(dev_ens, x.to(s.device), y.to(s.device), settings)
    loss_err = max_err(loss, ref_loss)[1]
    grad_err = max(max_err(a, r)[1] for a, r in zip(grads, ref_grads))
    # Adam's first update is lr * g / (|g| + eps) per element: near-zero gradients can flip sign
    # between devices, so weights may differ by up to 2 * lr there; reported, not a pass criterion.
    w_err = max(max_err(a, r)[0] for a, r in zip(dev_ens.parameters(), cpu_ens.parameters()))
    s.emit("parity", check="ensemble_step", members=M, dim=store.dim, loss_rel_err=loss_err, grad_rel_err=grad_err,
           weights_max_abs_err_after_adam=w_err, tol=FP32_TOL, passed=loss_err <= FP32_TOL and grad_err <= FP32_TOL)

    # A small trained ensemble (trained on the CPU), its logits and masks on both devices.
    with tempfile.TemporaryDirectory() as d:
        train_ensemble(store, pixels, settings, d, list(range(M)), max_steps=20, log=lambda m: None)
        cpu_ens, dev_ens = load_ensemble(d, M, store.dim, K), load_ensemble(d, M, store.dim, K, device=s.device)
    layers = [m[0].permute(2, 0, 1).float() for m in store.maps]
    ref = ensemble_logits(cpu_ens, layers, store.out_hw)
    s.reset_peak()
    with no_tf32():
        out = ensemble_logits(dev_ens, [a.to(s.device) for a in layers], store.out_hw)
    err, rel = max_err(out, ref)
    agree = (Votes.of(out).mask("hard").cpu() == Votes.of(ref).mask("hard")).float().mean().item()
    s.emit("parity", check="trained_ensemble_predictions", max_abs_err=err, rel_err=rel, mask_agreement=agree,
           tol=FP32_TOL, passed=rel <= FP32_TOL and agree >= 0.999)


# --- extraction ----------------------------------------------------------------------------------
def extraction(s: Suite) -> None:
    flags = lsun_flags(s.quick)
    model, diffusion = build_unet(flags, s.device)
    cfg = train_config("lsun256")
    steps, blocks = cfg["steps"], cfg["blocks"]
    batches = [1] if s.quick else [1, 4, 8]
    repeats = 1 if s.quick else 3
    s.reset_peak()
    original = None
    fwd = full_forward_flops(model, flags["image_size"])
    # CPU float16 convolutions are a slow fallback (see load_model_and_diffusion): not worth timing.
    for precision in ("fp32", "fp16", "bf16") if s.cuda else ("fp32", "bf16"):
        for channels_last in (False, True):
            for n in batches:
                s.reset_peak()
                row = compare(model, diffusion, steps, blocks, n, str(s.device), repeats, precision, channels_last,
                              original)
                original = row.pop("_original")
                s.emit("extraction", image_size=flags["image_size"], forward_tflop=round(fwd / 1e12, 4), **row)
    # The original as published ran the U-Net with use_fp16 (a float16 torso), batch 1.
    if s.cuda:
        model.convert_to_fp16()
        s.reset_peak()
        row = compare(model, diffusion, steps, blocks, 1, str(s.device), repeats)
        s.emit("extraction", image_size=flags["image_size"], variant="original_use_fp16_torso",
               original_use_fp16_images_per_s=row["original_images_per_s"],
               original_use_fp16_tflop_per_s=row["original_tflop_per_s"])


# --- ensemble training ---------------------------------------------------------------------------
def ensemble(s: Suite) -> None:
    workload = "faces64" if s.quick else "lsun256"
    settings = EnsembleSettings.from_config(train_config(workload))
    M, B, K = 10, settings.batch_size, settings.number_class
    iters = 5 if s.quick else 200
    store, pixels = synthetic_store(workload, 1 if s.quick else 2)
    n = M * iters * B
    rows = {}

    def timed_train(members: list[int], step: str) -> float:
        """Seconds of one train_ensemble call training ``members`` with ensemble_step ``step``."""
        step_settings = dataclasses.replace(settings, ensemble_step=step)
        with tempfile.TemporaryDirectory() as d:
            sync(s.device)
            t0 = time.perf_counter()
            train_ensemble(store, pixels, step_settings, d, members, device=str(s.device), max_steps=iters,
                           log=lambda m: None)
            sync(s.device)
            return time.perf_counter() - t0

    s.reset_peak()
    timed_train([0], "per_member")  # warm-up: CUDA context, kernels, allocator
    for name in ("batched", "per_member"):
        s.reset_peak()
        rows[name] = n / timed_train(list(range(M)), name)
        s.emit("ensemble", variant=name, dim=store.dim, members=M, iterations=iters,
               pixels_per_s=round(rows[name]), store="cpu (gathered per batch, then copied)")
    sub = torch.randperm(len(pixels.labels), generator=torch.Generator().manual_seed(1))[:20000]
    X, y = store.pixels(*pixels.coords(sub)), pixels.labels[sub]
    s.reset_peak()
    rows["original_loop"] = n / sequential(X, y, K, iters, B, device=str(s.device))
    s.emit("ensemble", variant="original_loop", dim=store.dim, members=M, iterations=iters,
           pixels_per_s=round(rows["original_loop"]))
    s.emit("ensemble", check="ratios", batched_over_original=round(rows["batched"] / rows["original_loop"], 2),
           per_member_over_original=round(rows["per_member"] / rows["original_loop"], 2))
    step_variants(s, settings, store.dim, M)


def step_variants(s: Suite, settings: EnsembleSettings, dim: int, M: int) -> None:
    """The bare batched step (forward, backward, fused Adam) on device-resident data: eager vs
    torch.compile vs torch.compile with CUDA graphs; the fastest is reported as chosen."""
    K, B = settings.number_class, settings.batch_size
    x = torch.randn(M, B, dim, device=s.device)
    y = torch.randint(0, K, (M, B), device=s.device)
    iters = 5 if s.quick else 200
    modes = {"eager": None}
    if s.cuda:  # compiling on the CPU needs a C++ toolchain and minutes: the GPU run measures it
        # "default" rather than max-autotune: autotuning alone can take minutes of the suite's budget.
        modes.update({"compile": "default", "compile_cudagraphs": "reduce-overhead"})
    rates = {}
    for name, mode in modes.items():
        ens = PixelEnsemble(M, dim, K, generators=[member_generator(0, m) for m in range(M)]).to(s.device).train()
        opt = make_optimizer(list(ens.parameters()), settings)

        def loss_of(xb, yb):
            return per_member_ce(ens(xb), yb).sum()
        fn = loss_of if mode is None else torch.compile(loss_of, mode=mode)
        try:
            s.reset_peak()
            for i in range(iters + 3):  # 3 warm-up steps (compilation happens here)
                if i == 3:
                    sync(s.device)
                    t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                fn(x, y).backward()
                opt.step()
            sync(s.device)
            rates[name] = M * B * iters / (time.perf_counter() - t0)
            s.emit("ensemble", variant=f"step_{name}", dim=dim, pixels_per_s=round(rates[name]))
        except Exception as e:
            s.emit("ensemble", variant=f"step_{name}", dim=dim, error=f"{type(e).__name__}: {e}")
    s.emit("ensemble", check="step_chosen", chosen=max(rates, key=rates.get),
           **{f"{k}_pixels_per_s": round(v) for k, v in rates.items()})


# --- DDPM training and sampling -----------------------------------------------------------------
def ddpm(s: Suite) -> None:
    from PIL import Image

    flags = train_config("faces64")["model_flags"]
    batch = 2 if s.quick else 64
    updates = 2 if s.quick else 30
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "images")
        os.makedirs(data)
        rng = np.random.default_rng(0)
        for i in range(batch):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(os.path.join(data, f"{i}.png"))
        images = torch.from_numpy(rng.integers(0, 256, (batch, 3, 64, 64), dtype=np.uint8))
        for precision in ("fp32", "bf16"):
            if precision != "fp32" and not s.cuda:
                s.emit("ddpm", check=f"train_{precision}", skipped="DDPMTrainer runs mixed precision on CUDA only")
                continue
            opts = DDPMTrainOptions(data_dirs=[data], log_dir=os.path.join(d, precision), model_flags=flags,
                                    batch_size=batch, precision=precision, device=str(s.device))
            trainer = DDPMTrainer(opts, log=lambda m: None)
            trainer.ddp_model = trainer.model.train()
            s.reset_peak()
            for i in range(updates + 2):  # 2 warm-up updates
                if i == 2:
                    sync(s.device)
                    t0 = time.perf_counter()
                terms = trainer.train_step(images)
            sync(s.device)
            rate = updates / (time.perf_counter() - t0)
            loss = terms["loss"].item() / batch
            s.emit("ddpm", check=f"train_{precision}", image_size=64, batch=batch, updates_per_s=round(rate, 2),
                   images_per_s=round(rate * batch, 1), last_loss=round(loss, 4), passed=bool(np.isfinite(loss)))
            model = trainer.model.eval()
        respacing = "ddim10" if s.quick else "ddim50"
        diffusion = sampling_diffusion(flags, respacing)
        n = 2 if s.quick else 64
        for precision in ("fp32", "bf16") if s.cuda else ("fp32",):
            s.reset_peak()
            with torch.no_grad(), (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16"
                                   else contextlib.nullcontext()):
                sample_batch(model, diffusion, n, 64, 0, 0, use_ddim=True, device=s.device)  # warm-up
                sync(s.device)
                t0 = time.perf_counter()
                x = sample_batch(model, diffusion, n, 64, 0, 1, use_ddim=True, device=s.device)
                sync(s.device)
            rate = n / (time.perf_counter() - t0)
            s.emit("ddpm", check=f"sample_{respacing}_{precision}", batch=n, images_per_s=round(rate, 2),
                   passed=bool(torch.isfinite(x).all()))


SECTIONS = {"parity": parity, "extraction": extraction, "ensemble": ensemble, "ddpm": ddpm}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: cuda (cpu with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, the same code (CI runs it on the CPU)")
    p.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these sections")
    p.add_argument("--out", help="also append the JSON lines to this file (e.g. docs/bench/gpu_<date>.jsonl)")
    a = p.parse_args()
    device = a.device or ("cpu" if a.quick else "cuda")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device is visible to torch; on a CPU machine run "
              "`python bench/gpu_suite.py --quick --device cpu`", file=sys.stderr)
        return 2
    s = Suite(device, a.quick, a.out)
    t0 = time.perf_counter()
    s.emit("info", torch=torch.__version__, cuda=torch.version.cuda, cpu_threads=torch.get_num_threads(),
           cudnn_allow_tf32=torch.backends.cudnn.allow_tf32, matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    for name in a.only or SECTIONS:
        s.run(name, lambda: SECTIONS[name](s))
    s.emit("summary", seconds=round(time.perf_counter() - t0, 1), failed=s.failed, passed=not s.failed)
    return 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
