"""Peak RSS of ensemble training on a bedroom_28-shaped workload, ours vs the original's layout.

    python bench/memory.py [--images 40] [--steps 200] [--baseline-images 1] [--quick]

Ours: 40 images of synthetic LSUN-256 activations (blocks 5,6,7,8,12 at 3 steps) through the real
training path (FeatureStore + train_ensemble for --steps iterations of all 10 members).
Baseline, same run: the original's prepare_data layout (X float32 [N, 8448, 256, 256], then
permute/reshape/mask to [pixels, 8448]) measured on --baseline-images images (it cannot fit
40 here); its 40-image X size is also reported as computed bytes. Each measurement runs in a
fresh process. Prints one JSON line. ``--quick`` runs the same code on the 64 px faces shapes
(2 images, 3 steps): the CI test.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "src"), os.path.join(HERE, "..")]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(workload: str, images: int, steps: int) -> dict:
    from workloads import synthetic_store, train_config
    from ddpmseg.classifier.train import EnsembleSettings, train_ensemble

    t0 = time.time()
    store, pixels = synthetic_store(workload, images)
    cfg = train_config(workload)
    with tempfile.TemporaryDirectory() as d:
        train_ensemble(store, pixels, EnsembleSettings.from_config(cfg), d, list(range(cfg["model_num"])),
                       max_steps=steps, log=lambda m: None)
    return {"peak_rss_mb": peak_rss_mb(), "store_mb": store.nbytes / 2**20, "pixels": len(pixels.labels),
            "seconds": time.time() - t0}


def original(workload: str, images: int) -> dict:
    """The original's prepare_data: upsampled float32 X, then its permute/reshape/mask copies."""
    import torch
    import torch.nn.functional as F
    from workloads import WORKLOADS, train_config

    layers, size, _ = WORKLOADS[workload]
    t0 = time.time()
    g = torch.Generator().manual_seed(0)
    X = torch.zeros((images, sum(c for c, _, _ in layers), size, size))
    y = torch.randint(0, train_config(workload)["number_class"], (images, size, size), generator=g)
    for i in range(images):
        off = 0
        for c, h, w in layers:
            X[i, off:off + c] = F.interpolate(torch.randn(1, c, h, w, generator=g), size=(size, size),
                                              mode="bilinear")[0]
            off += c
    d = X.shape[1]
    X = X.permute(1, 0, 2, 3).reshape(d, -1).permute(1, 0)
    X = X[y.reshape(-1) != 0]
    return {"peak_rss_mb": peak_rss_mb(), "x_mb": X.numel() * 4 / 2**20, "seconds": time.time() - t0}


def worker(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--baseline-images", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny run of the same code (faces64 shapes)")
    p.add_argument("--workload", default="lsun256", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["ours", "original"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.quick:
        a.workload, a.images, a.steps, a.baseline_images = "faces64", 2, 3, 1
    if a.worker == "ours":
        print(json.dumps(ours(a.workload, a.images, a.steps)))
        return
    if a.worker == "original":
        print(json.dumps(original(a.workload, a.images)))
        return
    common = ["--workload", a.workload, "--steps", str(a.steps)]
    ours_full = worker(["--worker", "ours", "--images", str(a.images), *common])
    ours_small = worker(["--worker", "ours", "--images", str(a.baseline_images), *common])
    orig_small = worker(["--worker", "original", "--images", str(a.baseline_images), *common])
    from workloads import WORKLOADS

    layers, size, _ = WORKLOADS[a.workload]
    dim = sum(c for c, _, _ in layers)
    x_bytes_full = a.images * dim * size * size * 4
    print(json.dumps({
        "bench": "memory", "argv": sys.argv[1:], "quick": a.quick,
        "workload": f"{a.workload}-shaped: {a.images} images, {dim}-d, 10 members",
        "ours_peak_rss_gib": round(ours_full["peak_rss_mb"] / 1024, 2),
        "ours_store_gib": round(ours_full["store_mb"] / 1024, 2),
        "target_gib": 4.0,
        f"ours_peak_rss_gib_{a.baseline_images}img": round(ours_small["peak_rss_mb"] / 1024, 2),
        f"original_peak_rss_gib_{a.baseline_images}img": round(orig_small["peak_rss_mb"] / 1024, 2),
        f"ratio_original_over_ours_{a.baseline_images}img": round(orig_small["peak_rss_mb"] / ours_small["peak_rss_mb"], 1),
        "original_X_gib_computed": round(x_bytes_full / 2**30, 1),
        "training_steps": a.steps,
    }))


if __name__ == "__main__":
    main()
