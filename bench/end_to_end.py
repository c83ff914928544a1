"""End to end: the celebamask64 command vs the original harness, same data, same run.

    python bench/end_to_end.py [--quick]

Ours: the job of ``train_interpreter.py --exp experiments/celebamask64/ddpm.json`` (load_config,
resolve_model_flags, run_interpreter: features, ensemble, evaluation, metrics, report), in a temp
folder, timed wall-clock; its phases are the run's own timings_s (training features, ensemble
training, evaluation).
Original: its train_interpreter.py rebuilt from the fact sheet (../shared/docs/ddpm_segmentation_facts.md):
prepare_data (a U-Net built from the checkpoint; per training image and step one full batch-1
forward with hooks, bench/extraction.py's original_features; every map bilinearly upsampled to the
image size; X float32 [N, C, H, W] in RAM, permuted and reshaped to [pixels, C] and masked), train
(per member a fresh nn.Sequential with N(0, 0.02) weights and zero biases, Adam, DataLoader batch 64
shuffle drop_last over X; at most max_epochs; from the epoch index after early_stop_after_epoch on,
a batch loss that is no new best adds one to a count that stops the member past
early_stop_patience; model_<m>.pth saved) and evaluation (a new extractor, the members loaded,
per test image the same features, each member's logits, softmax and entropy, the per-pixel
majority vote torch.mode of their argmaxes, the top-10% mutual-information uncertainty,
predictions/<stem>.npy and visualizations/<stem>.jpg written).
Both see the same images and labels (our data loader's arrays, trained on the pixels our
trained_pixels keeps under the config's ignore_label and min_region_pixels), steps, blocks, shared
noise and checkpoint, and are scored by ddpmseg.common.metrics on the same ground truth, so only
the pipeline differs; their random streams differ, so their mIoUs are close, not equal.
Each side runs in its own fresh process (``--worker``) so their peak RSS are apart. Prints one
JSON line; mIoUs in percent. ``--quick``: 2 training and 2 test images, 2 members, 1 epoch, one
step, two small blocks (the CI test; it needs ../shared all the same).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
sys.path[:0] = [HERE, os.path.join(REPO, "src"), REPO]

from ensemble_throughput import FeatureDataset, original_mlp  # noqa: E402
from extraction import original_features  # noqa: E402
from ddpmseg.classifier.interpreter import run_interpreter  # noqa: E402
from ddpmseg.common.config import load_config  # noqa: E402
from ddpmseg.common.device import resolve_device  # noqa: E402
from ddpmseg.common.metrics import IoUAccumulator  # noqa: E402
from ddpmseg.common.model_flags import resolve_model_flags  # noqa: E402
from ddpmseg.common.report import colorize_mask  # noqa: E402
from ddpmseg.common.runfiles import peak_rss_mb  # noqa: E402
from ddpmseg.common.runlog import RunLog  # noqa: E402
from ddpmseg.data.folders import ImageLabelDataset, trained_pixels  # noqa: E402
from ddpmseg.features.ddpm import collect_features, shared_noise  # noqa: E402
from guided_diffusion.checkpoint import load_model_and_diffusion  # noqa: E402

SHARED = os.environ.get("DDPMSEG_SHARED", os.path.join(REPO, "..", "shared"))
DATA = os.path.join(SHARED, "data", "celebamask64", "real")
CHECKPOINT = os.path.join(SHARED, "checkpoints", "faces64_ema.pt")
EXPERIMENT = os.path.join(REPO, "experiments", "celebamask64", "ddpm.json")
# The published celebamask64 setting as is; a tiny one (blocks 7 and 8 have 64 channels each) that
# runs both pipelines in seconds. early_stop_after_epoch 0 with one epoch: the rule never watches.
QUICK = {"training_number": 2, "testing_number": 2, "model_num": 2, "max_epochs": 1, "early_stop_after_epoch": 0,
         "steps": [50], "blocks": [7, 8], "dim": [64, 64, 128]}


def job_config(quick: bool, exp_dir: str) -> dict:
    """The experiment config with the shared data, checkpoint and a temp exp_dir (and QUICK's keys)."""
    return load_config(EXPERIMENT, {**(QUICK if quick else {}), "exp_dir": exp_dir, "model_path": CHECKPOINT,
                                    "training_path": os.path.join(DATA, "train"),
                                    "testing_path": os.path.join(DATA, "test")})


def ours(quick: bool) -> dict:
    """Seconds, phases, test mIoU and per-member iterations of the real job."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg = job_config(quick, os.path.join(tmp, "run"))
        metrics = run_interpreter(cfg, resolve_model_flags(cfg), RunLog())
        seconds = time.perf_counter() - t0
    t = metrics["timings_s"]
    return {"seconds": seconds, "features_s": t["train_features_s"], "training_s": t["train_s"],
            "evaluation_s": t["evaluation_s"], "miou": metrics["miou"],
            "iterations": [s["iterations"] for _, s in sorted(metrics["members"].items())]}


def dataset(cfg: dict, split: str) -> ImageLabelDataset:
    """Our loader's training or test set, opened as a run opens it."""
    return ImageLabelDataset(cfg[f"{split}_path"], resolution=cfg["dim"][0], num_images=cfg[f"{split}_number"],
                             number_class=cfg["number_class"], ignore_label=cfg["ignore_label"],
                             palette=cfg["palette"])


def extractor(cfg: dict, flags: dict, device: torch.device):
    """The original's FeatureExtractorDDPM: the checkpoint's U-Net and the one shared noise tensor
    (None: fresh noise in every q_sample)."""
    model, diffusion = load_model_and_diffusion(cfg["model_path"], flags, device)
    noise = shared_noise(cfg["seed"], cfg["dim"][0], device) if cfg["share_noise"] else None
    return lambda image: collect_features(cfg, original_features(model, diffusion, image[None].to(device),
                                                                 cfg["steps"], sorted(cfg["blocks"]), noise))


def prepare_data(cfg: dict, flags: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's X [N, C, H, W] float32, then [pixels, C] of the pixels trained on, and their labels."""
    features, train_set = extractor(cfg, flags, device), dataset(cfg, "training")
    (h, w, d), hw = cfg["dim"], cfg["dim"][0] * cfg["dim"][1]
    X = torch.zeros(len(train_set), d, h, w)
    labels, keep = [], []
    for i in range(len(train_set)):
        item = train_set[i]
        X[i] = features(item["image"]).cpu()
        flat, kept, _ = trained_pixels(item["label"].numpy(), cfg["ignore_label"], cfg["min_region_pixels"])
        labels.append(flat)
        keep.append(kept + i * hw)
    X = X.permute(1, 0, 2, 3).reshape(d, -1).permute(1, 0)
    keep = torch.from_numpy(np.concatenate(keep))
    return X[keep], torch.from_numpy(np.concatenate(labels))[keep]


def init_weights(model: nn.Module) -> None:
    """The original's init_weights('normal', 0.02) on Linear layers; BatchNorm1d keeps its defaults."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


def train(X: torch.Tensor, y: torch.Tensor, cfg: dict, exp_dir: str, device: torch.device) -> list[int]:
    """The original's train(): members one after another over one shared DataLoader; iterations of each."""
    loader = torch.utils.data.DataLoader(FeatureDataset(X, y), batch_size=cfg["batch_size"], shuffle=True,
                                         drop_last=True)
    iterations = []
    for m in range(cfg["model_num"]):
        model = original_mlp(X.shape[1], cfg["number_class"])
        init_weights(model)
        model.to(device).train()
        opt, loss_fn = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"]), nn.CrossEntropyLoss()
        step, best, count, stop = 0, 1e7, 0, False
        for epoch in range(cfg["max_epochs"]):
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                opt.zero_grad()
                pred = model(xb)
                loss = loss_fn(pred, yb)
                (pred.log_softmax(1).argmax(1) == yb).float().mean()  # multi_acc (the original prints it every 1000)
                loss.backward()
                opt.step()
                step += 1
                if epoch > cfg["early_stop_after_epoch"]:
                    value = loss.item()
                    best, count = (value, 0) if value < best else (best, count + 1)
                    if count > cfg["early_stop_patience"]:
                        stop = True
                        break
            if stop:
                break
        torch.save({"model_state_dict": model.state_dict()}, os.path.join(exp_dir, f"model_{m}.pth"))
        iterations.append(step)
    return iterations


@torch.no_grad()
def predict_labels(models: list[nn.Module], x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, float]:
    """The original's predict_labels: majority vote (torch.mode) of the members' argmaxes, and the mean
    of the top 10% of the pixels' mutual information (mean softmax entropy minus mean entropy)."""
    logits = [m(x) for m in models]
    mean = sum(torch.softmax(z, 1) for z in logits) / len(logits)
    entropy = torch.stack([torch.distributions.Categorical(logits=z).entropy() for z in logits]).mean(0)
    js = torch.distributions.Categorical(probs=mean).entropy() - entropy
    votes = torch.stack([z.argmax(1).reshape(size).cpu() for z in logits], dim=-1)
    return torch.mode(votes, 2)[0], js.sort()[0][-int(js.shape[0] / 10):].mean().item()


def evaluation(cfg: dict, flags: dict, exp_dir: str, device: torch.device) -> float:
    """The original's evaluation(): test mIoU of the saved members (scored by ddpmseg.common.metrics)."""
    features, test_set = extractor(cfg, flags, device), dataset(cfg, "testing")
    models = []
    for m in range(cfg["model_num"]):
        model = original_mlp(cfg["dim"][2], cfg["number_class"])
        model.load_state_dict(torch.load(os.path.join(exp_dir, f"model_{m}.pth"))["model_state_dict"])
        models.append(model.to(device).eval())
    iou = IoUAccumulator(cfg["number_class"], cfg["ignore_label"], cfg["class_names"])
    for folder in ("predictions", "visualizations"):
        os.makedirs(os.path.join(exp_dir, folder))
    for i in range(len(test_set)):
        item = test_set[i]
        x = features(item["image"]).view(cfg["dim"][2], -1).permute(1, 0)
        pred, _ = predict_labels(models, x, tuple(cfg["dim"][:2]))
        np.save(os.path.join(exp_dir, "predictions", item["stem"] + ".npy"), pred.numpy())
        Image.fromarray(colorize_mask(pred, cfg["palette"])).save(
            os.path.join(exp_dir, "visualizations", item["stem"] + ".jpg"))
        iou.update(pred, item["own_label"])
    return iou.result()["miou"]


def original(quick: bool) -> dict:
    """Seconds, phases, test mIoU and per-member iterations of the original harness."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg = job_config(quick, tmp)
        flags, device = resolve_model_flags(cfg), resolve_device(cfg["device"])
        random.seed(cfg["seed"])  # the original's setup_seed
        np.random.seed(cfg["seed"])
        torch.manual_seed(cfg["seed"])
        t1 = time.perf_counter()
        X, y = prepare_data(cfg, flags, device)
        t2 = time.perf_counter()
        iterations = train(X, y, cfg, tmp, device)
        del X, y
        t3 = time.perf_counter()
        miou = evaluation(cfg, flags, tmp, device)
        t4 = time.perf_counter()
    return {"seconds": t4 - t0, "features_s": t2 - t1, "training_s": t3 - t2, "evaluation_s": t4 - t3,
            "miou": miou, "iterations": iterations}


WORKERS = {"ours": ours, "original": original}
PHASES = ("features", "training", "evaluation")


def worker(name: str, quick: bool) -> dict:
    """One side in a fresh process: its result, its peak RSS and its torch threads."""
    out = subprocess.run([sys.executable, __file__, "--worker", name, *(["--quick"] if quick else [])],
                         check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run of both pipelines (the CI test)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        # Progress and logs go to stderr: stdout carries the one JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            result = WORKERS[a.worker](a.quick)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads()}))
        return None
    mine, theirs = worker("ours", a.quick), worker("original", a.quick)
    cfg = job_config(a.quick, "unused")  # what both ran, for the record
    sides = (("ours", mine), ("original", theirs))
    line = {
        "bench": "end_to_end", "argv": sys.argv[1:] if argv is None else list(argv), "quick": a.quick,
        "training_images": cfg["training_number"], "test_images": cfg["testing_number"],
        "members": cfg["model_num"], "dim": cfg["dim"][2], "steps": cfg["steps"], "blocks": cfg["blocks"],
        "device": str(resolve_device(cfg["device"])), "torch_threads": mine["torch_threads"],
        "ours_s": round(mine["seconds"], 2), "original_s": round(theirs["seconds"], 2),
        "speedup": round(theirs["seconds"] / mine["seconds"], 2),
        "ours_miou": round(100 * mine["miou"], 2), "original_miou": round(100 * theirs["miou"], 2),
        **{f"{side}_{phase}_s": round(r[f"{phase}_s"], 2) for side, r in sides for phase in PHASES},
        # The rest of each job: opening and checking the data, loading the U-Net, seeding; ours also extracts
        # the first training image to check the feature size, and writes metrics.json and report.html.
        **{f"{side}_other_s": round(r["seconds"] - sum(r[f"{phase}_s"] for phase in PHASES), 2) for side, r in sides},
        "ours_peak_rss_gib": round(mine["peak_rss_mb"] / 1024, 2),
        "original_peak_rss_gib": round(theirs["peak_rss_mb"] / 1024, 2),
        "ours_iterations_per_member": mine["iterations"], "original_iterations_per_member": theirs["iterations"],
    }
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
