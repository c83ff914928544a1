"""How the interpreter pipeline scales with the number of labelled images, RAM vs disk feature store.

    python bench/scaling.py [--sizes 10 20 40 80] [--iterations 200] [--quick]

For each size and each ``feature_store`` ("ram", "disk") a fresh process runs what ``ddpmseg train``
runs before evaluation, on procedural 64 px shapes images (ddpmseg.data.procedural) and the demo's
small U-Net with random weights (ddpmseg.demo.DEMO_FLAGS, 672-d features, CPU): the ``Run`` opens the
data and U-Net, ``build_training_store`` extracts every training image's features into the store,
and ``train_ensemble`` trains the 10 members for --iterations iterations, then for twice that. Per
size it reports extraction seconds (opening the run included: the intercept takes the constant),
training seconds per iteration (the difference of the two trainings over --iterations, so one-off
costs drop out; the feature matrix's build is reported apart), peak RSS of the process
and the store's bytes; then, per store, each quantity's least-squares line over the sizes (slope per
image, intercept). Last comes the analytic line for the published 256 px config (experiments/bedroom_28,
its layer shapes from bench/workloads.py): store bytes per image and the largest label set that fits
24 GB of RAM with and without the disk store, with the assumptions it rests on. One JSON line.
``--quick`` runs 2 tiny sizes (the CI test).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(REPO, "src"), REPO]

STORES = ("ram", "disk")
BUDGET_BYTES = 24 * 10**9  # the 24 GB the analytic line asks about
MEMBERS = 10


def worker(data: str, images: int, store: str, iterations: int) -> dict:
    """One pipeline run in this process (fresh, so its peak RSS is its own)."""
    import torch

    from ddpmseg.classifier.interpreter import Run
    from ddpmseg.classifier.train import TrainingInputs, train_ensemble
    from ddpmseg.common.config import load_config
    from ddpmseg.common.model_flags import resolve_model_flags
    from ddpmseg.common.runfiles import peak_rss_mb
    from ddpmseg.demo import DEMO_FLAGS

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as exp:
        cfg = load_config(os.path.join(REPO, "experiments/shapes64/ddpm.json"), {
            "exp_dir": exp, "training_path": os.path.join(data, "real", "train"),
            "testing_path": os.path.join(data, "real", "test"), "training_number": images, "testing_number": 1,
            "model_path": "", "random_weights": True, "model_flags": DEMO_FLAGS, "feature_store": store,
            "device": "cpu", "model_num": MEMBERS})
        t0 = time.perf_counter()
        run = Run(cfg, resolve_model_flags(cfg), log=lambda m: None)
        feature_store, pixels = run.build_training_store(exp)
        extraction_s = time.perf_counter() - t0
        settings = run.ensemble_settings
        matrix_s = timed(lambda: TrainingInputs.build(feature_store, pixels, settings, log=lambda m: None))

        def training_s(steps: int) -> float:
            return timed(lambda: train_ensemble(feature_store, pixels, settings, exp, list(range(MEMBERS)),
                                                max_steps=steps, log=lambda m: None, progress=False))
        # Two runs, of --iterations and twice that: their difference is the iterations alone, without
        # the one-off costs (networks built, feature matrix, member files written).
        short = training_s(iterations)
        per_iteration = (training_s(2 * iterations) - short) / iterations
        result = {"images": images, "store": store, "labelled_pixels": len(pixels.labels), "dim": feature_store.dim,
                  "extraction_s": round(extraction_s, 2), "feature_matrix_s": round(matrix_s, 3),
                  "training_s_per_iteration": round(per_iteration, 4),
                  "peak_rss_bytes": int(peak_rss_mb() * 2**20), "store_bytes": feature_store.nbytes}
        feature_store.close()
    return result


def timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def least_squares(xs: list[float], ys: list[float]) -> dict:
    """Slope and intercept of the least-squares line y = slope * x + intercept."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return {"slope_per_image": slope, "intercept": my - slope * mx}


QUANTITIES = ("extraction_s", "training_s_per_iteration", "peak_rss_bytes", "store_bytes")


def fits(rows: list[dict]) -> dict:
    """Per store, each quantity's least-squares line over the sizes."""
    out = {}
    for store in STORES:
        mine = [r for r in rows if r["store"] == store]
        xs = [r["images"] for r in mine]
        out[store] = {q: {k: round(v, 6 if q == "training_s_per_iteration" else 4)
                          for k, v in least_squares(xs, [r[q] for r in mine]).items()} for q in QUANTITIES}
    return out


# What the analytic 256 px line counts (it goes into the JSON line with the numbers).
LSUN_ASSUMPTIONS = (
    "RAM = the process's base (this run's fitted peak-RSS intercept with the disk store: Python, torch, the "
    "data loaders) + the 256 px U-Net's float32 weights + the 10 members' float32 weights, gradients and two "
    "Adam moments + per image its labelled-pixel index and label (int64 each, every pixel labelled) + with the "
    "RAM store, the float16 store. Not counted: the dense feature matrix (8448-d passes its 1 GiB budget below "
    "one image, so it is never built), the U-Net's activations during extraction, and the disk store's page "
    "cache (the kernel reclaims it). 24 GB = 24e9 bytes.")


def lsun256_line(process_base_bytes: float) -> dict:
    """The published 256 px config's store per image and the largest label set within BUDGET_BYTES,
    under LSUN_ASSUMPTIONS."""
    import torch

    from ddpmseg.classifier.ensemble import PixelEnsemble
    from ddpmseg.common.config import load_config
    from guided_diffusion.script_util import create_model_and_diffusion, merged_flags
    from workloads import LSUN_FLAGS, LSUN_LAYERS

    cfg = load_config(os.path.join(REPO, "experiments/bedroom_28/ddpm.json"))
    side = cfg["dim"][0]
    if len(cfg["steps"]) * len(cfg["blocks"]) != len(LSUN_LAYERS) or sum(c for c, _, _ in LSUN_LAYERS) != cfg["dim"][2]:
        raise SystemExit("error: bench/workloads.py LSUN_LAYERS no longer match experiments/bedroom_28/ddpm.json")
    store_per_image = sum(c * h * w for c, h, w in LSUN_LAYERS) * 2  # float16
    labels_per_image = side * side * (8 + 8)
    with torch.device("meta"):  # shapes only: nothing allocated
        unet_params = sum(p.numel() for p in create_model_and_diffusion(**merged_flags(LSUN_FLAGS))[0].parameters())
        member_params = sum(p.numel() for p in PixelEnsemble(cfg["model_num"], cfg["dim"][2],
                                                             cfg["number_class"]).parameters())
    fixed = process_base_bytes + unet_params * 4 + member_params * 4 * 4
    ram_per_image = store_per_image + labels_per_image
    return {
        "config": "experiments/bedroom_28/ddpm.json", "side": side, "dim": cfg["dim"][2],
        "store_gib_per_image": round(store_per_image / 2**30, 4),
        "labels_mib_per_image": round(labels_per_image / 2**20, 2),
        "unet_params": unet_params, "ensemble_training_state_gib": round(member_params * 16 / 2**30, 3),
        "fixed_gib": round(fixed / 2**30, 2), "budget_gb": BUDGET_BYTES / 1e9,
        "max_images_ram_store": int((BUDGET_BYTES - fixed) // ram_per_image),
        "max_images_disk_store": int((BUDGET_BYTES - fixed) // labels_per_image),
        "disk_gib_at_that_size": round((BUDGET_BYTES - fixed) // labels_per_image * store_per_image / 2**30),
        "assumptions": LSUN_ASSUMPTIONS,
    }


def run_worker(data: str, images: int, store: str, iterations: int) -> dict:
    argv = [sys.executable, __file__, "--worker", data, str(images), store, "--iterations", str(iterations)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40, 80])
    p.add_argument("--iterations", type=int, default=200, help="training iterations timed per size")
    p.add_argument("--quick", action="store_true", help="2 tiny sizes, 2 iterations (the CI test)")
    p.add_argument("--worker", nargs=3, metavar=("DATA", "IMAGES", "STORE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        data, images, store = a.worker
        print(json.dumps(worker(data, int(images), store, a.iterations)))
        return
    if a.quick:
        a.sizes, a.iterations = [1, 2], 2
    if len(set(a.sizes)) < 2:
        raise SystemExit("error: --sizes needs at least two different sizes to fit a line through; give e.g. 10 20")
    from ddpmseg.data.procedural import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "shapes")
        write_dataset(data, train=max(a.sizes), test=1, unlabeled=0)
        rows = [run_worker(data, n, store, a.iterations) for store in STORES for n in a.sizes]
    line = fits(rows)
    print(json.dumps({"bench": "scaling", "argv": sys.argv[1:], "quick": a.quick, "members": MEMBERS,
                      "iterations": a.iterations, "torch_threads": 1, "sizes": a.sizes, "rows": rows, "fits": line,
                      "lsun256": lsun256_line(line["disk"]["peak_rss_bytes"]["intercept"])}))


if __name__ == "__main__":
    main()
