"""Kill -9 anywhere: SIGKILL a tool at random moments, rerun it until it finishes, and compare the
final outputs with an uninterrupted run's.

    python bench/faults.py --tool all --kills 10 [--seed 0] [--out faults.json]
    python bench/faults.py --quick          # 2 kills of train_interpreter.py (the CI test)

Tools (tiny configs, those of the tests: the tiny64 U-Net from the fixtures' rule weights,
celebamask64 images): train_interpreter, train_interpreter_refine (with DDPS refinement),
train_ddpm, generate_dataset, train_deeplab. For each, an uninterrupted reference run is timed;
then trials start from an empty folder: each attempt is killed (SIGKILL to its process group)
at a moment drawn uniformly between the moment the reference run's output folder appeared (before
it, a tool has written nothing) and the reference run's end, up to --kills_per_trial times, and
the last attempt runs to the end. A trial survives when every rerun exits 0 and the final
folder equals the reference: the same file names (no temp file, lock or partial file left),
tensors, arrays, images and CSV/JSON values bit for bit, except what records the run's history
rather than its result (timings, peak memory, log.txt, the epochs this invocation trained,
throughput). Every run uses the same folder path, so paths inside outputs match too.
Prints one JSON object (also written to --out).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(REPO, "src"), REPO, os.path.join(REPO, "tests")]

from conftest import CELEBAMASK64, FAST_INTERPRETER, manifest, rule_weights  # noqa: E402  (the tests' tiny configs)
from ddpmseg.common.atomic import TEMP_NAME  # noqa: E402
from ddpmseg.common.runlock import LOCK_NAME  # noqa: E402

TOOLS = ("train_interpreter", "train_interpreter_refine", "train_ddpm", "generate_dataset", "train_deeplab")
# Values that record how a run went, not what it computed (a resumed run differs in them by design).
HISTORY_KEYS = {"timings_s", "training_timings_s", "peak_rss_mb", "epoch_train_s", "trained_epochs", "train_s",
                "images_per_s", "seconds"}
HISTORY_FILES = {"log.txt", "report.html"}  # report.html shows the timings
REFINE = {"method": "ddps", "iterations": 20, "width": 8, "folds": 2, "fold_members": 1, "steps": 3}
DDPM_TINY = ["--image_size", "32", "--channel_mult", "1,2", "--num_channels", "32", "--num_res_blocks", "1",
             "--attention_resolutions", "8", "--learn_sigma", "True", "--dropout", "0.1", "--batch_size", "4",
             "--grid_size", "4", "--sample_respacing", "ddim3", "--ema_rate", "0.9,0.99"]


class Workspace:
    """Inputs the tools share, built once in ``root``: the tiny64 checkpoint, a finished interpreter
    run (generate_dataset's input) and a DatasetDDPM file (train_deeplab's input)."""

    def __init__(self, root: str):
        self.root = root
        self.real = os.path.join(str(CELEBAMASK64), "real")
        self.ckpt = os.path.join(root, "tiny64.pt")
        if not os.path.exists(self.ckpt):
            m = manifest("tiny64")
            torch.save(rule_weights(m["keys"]), self.ckpt)
            with open(os.path.join(root, "tiny64.json"), "w") as f:
                json.dump({"flags": m["flags"]}, f)
        self.run_dir = os.path.join(root, "run")  # every tool writes here, so paths in outputs agree

    def interpreter(self, exp_dir: str, refine: bool = False) -> list[str]:
        extra = ["--set", "refine=" + json.dumps(REFINE)] if refine else []
        return ["train_interpreter.py", "--exp", "experiments/celebamask64/ddpm.json", "--exp_dir", exp_dir,
                "--training_path", os.path.join(self.real, "train"), "--testing_path",
                os.path.join(self.real, "test"), "--model_path", self.ckpt, *FAST_INTERPRETER, *extra]

    def finished_interpreter_run(self) -> str:
        folder = os.path.join(self.root, "interpreter_input")
        out = os.path.join(folder, "50_4_5_6_7_8")
        if not os.path.isfile(os.path.join(out, "metrics.json")):
            run_tool(self.interpreter(folder), os.path.join(self.root, "interpreter_input.log"))
        return out

    def synthetic_npz(self) -> str:
        path = os.path.join(self.root, "samples_64x64x3.npz")
        if not os.path.exists(path):
            from PIL import Image
            pngs = sorted(p for p in os.listdir(os.path.join(self.real, "train")) if p.endswith(".png"))[:20]
            images = np.stack([np.asarray(Image.open(os.path.join(self.real, "train", p)).convert("RGB"))
                               for p in pngs])
            masks = np.stack([np.load(os.path.join(self.real, "train", p[:-4] + ".npy")) for p in pngs])
            np.savez(path, images, masks, np.random.default_rng(0).random(len(images)))
        return path

    def command(self, tool: str) -> tuple[list[str], str]:
        """The tool's command line and the folder whose contents are its outputs."""
        run = self.run_dir
        if tool in ("train_interpreter", "train_interpreter_refine"):
            return self.interpreter(run, refine=tool.endswith("refine")), run
        if tool == "train_ddpm":
            return ["-m", "ddpmseg", "train-ddpm", "--data_dir", os.path.join(str(CELEBAMASK64), "unlabeled"), "--log_dir", run,
                    *DDPM_TINY, "--max_steps", "6", "--save_interval", "2", "--log_interval", "1"], run
        if tool == "generate_dataset":
            return ["generate_dataset.py", "--run_dir", self.finished_interpreter_run(), "--out", run,
                    "--num_samples", "6", "--batch_size", "2", "--use_ddim", "True", "--timestep_respacing", "ddim5",
                    "--device", "cpu"], run
        if tool == "train_deeplab":
            return ["train_deeplab.py", "--exp", "experiments/celebamask64/ddpm.json", "--data_path",
                    self.synthetic_npz(), "--set", f"exp_dir={run}", "--set",
                    f"training_path={os.path.join(self.real, 'train')}", "--set",
                    f"testing_path={os.path.join(self.real, 'test')}", "--max_data", "10", "--uncertainty_portion",
                    "0.2", "--deeplab_batch_size", "4", "--workers", "0", "--num_epoch", "3", "--set",
                    "deeplab_backbone=mobilenet_v3_large", "--set", "deeplab_pretrained_backbone=false", "--set",
                    "deeplab_res=64", "--set", "training_number=2", "--set", "testing_number=2"], run
        raise ValueError(f"unknown tool {tool!r}; one of {', '.join(TOOLS)}")


def tool_env() -> dict[str, str]:
    # One thread: a result must not depend on how the machine's cores were shared at that moment.
    # Unbuffered: what a killed attempt printed last shows where the kill landed.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.path.join(REPO, "src")}


def start(cmd: list[str], log_path: str) -> subprocess.Popen:
    log = open(log_path, "ab")
    # Its own process group, so a kill also reaches any worker it started.
    return subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=tool_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_tool(cmd: list[str], log_path: str, folder: str | None = None) -> tuple[float, float]:
    """Run to the end; returns (wall seconds, seconds until ``folder`` appeared): before that moment
    the tool has written nothing, so kills earlier than it test nothing."""
    t0, appeared = time.time(), None
    proc = start(cmd, log_path)
    while proc.poll() is None:
        if appeared is None and folder is not None and os.path.exists(folder):
            appeared = time.time() - t0
        time.sleep(0.02)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed with exit status {proc.returncode}; see {log_path}")
    return time.time() - t0, appeared or 0.0


def last_line(path: str, start: int) -> str:
    """What the attempt whose output begins at byte ``start`` printed last (progress bars included):
    where the kill landed; "" when it printed nothing yet (start-up: imports, loading inputs)."""
    with open(path, "rb") as f:
        f.seek(max(start, os.path.getsize(path) - 2000))
        text = f.read().decode("utf-8", "replace").replace("\r", "\n")
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[-1][:100] if lines else ""


# -- comparing a folder with the reference -----------------------------------------------------
def files_of(folder: str) -> set[str]:
    out = set()
    for root, _, files in os.walk(folder):
        out.update(os.path.relpath(os.path.join(root, f), folder) for f in files)
    return out


def strip_history(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_history(v) for k, v in obj.items() if k not in HISTORY_KEYS}
    if isinstance(obj, (list, tuple)):
        return [strip_history(v) for v in obj]
    return obj


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


def same_file(a: str, b: str) -> bool:
    ext = os.path.splitext(a)[1]
    if ext in (".pt", ".pth"):
        load = lambda p: strip_history(torch.load(p, map_location="cpu", weights_only=True))  # noqa: E731
        return same_value(load(a), load(b))
    if ext == ".json":
        with open(a) as fa, open(b) as fb:
            return strip_history(json.load(fa)) == strip_history(json.load(fb))
    if ext == ".npy":
        return np.array_equal(np.load(a), np.load(b))
    if ext == ".npz":
        with np.load(a) as x, np.load(b) as y:
            return x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)
    if ext == ".csv":
        with open(a) as fa, open(b) as fb:
            return [strip_history(r) for r in csv.DictReader(fa)] == [strip_history(r) for r in csv.DictReader(fb)]
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def compare(folder: str, reference: str) -> dict:
    """Differences between a finished folder and the reference: missing, extra, leftover, differing."""
    mine, ref = files_of(folder), files_of(reference)
    leftover = sorted(f for f in mine if TEMP_NAME.fullmatch(os.path.basename(f)) or os.path.basename(f) == LOCK_NAME)
    differing = sorted(f for f in mine & ref
                       if os.path.basename(f) not in HISTORY_FILES and not same_file(os.path.join(folder, f),
                                                                                      os.path.join(reference, f)))
    return {"missing": sorted(ref - mine), "extra": sorted(mine - ref - set(leftover)), "leftover": leftover,
            "differing": differing}


# -- the experiment ----------------------------------------------------------------------------
def trial(cmd: list[str], folder: str, reference: str, window: tuple[float, float], max_kills: int,
          rng: random.Random, log_path: str) -> dict:
    """Kill the tool up to ``max_kills`` times at moments drawn from ``window`` (seconds after each
    attempt's start), then let it finish; compare its folder with the reference."""
    shutil.rmtree(folder, ignore_errors=True)
    kills = []
    while True:
        offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        proc = start(cmd, log_path)
        if len(kills) < max_kills:
            at = rng.uniform(*window)
            try:
                code = proc.wait(timeout=at)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills.append({"at_s": round(at, 2), "during": last_line(log_path, offset)})
                continue
        else:
            code = proc.wait()
        break
    diff = compare(folder, reference) if code == 0 else {}
    ok = code == 0 and not any(diff.values())
    return {"kills": kills, "exit": code, "survived": ok, **({k: v for k, v in diff.items() if v} if diff else {})}


def measure(tool: str, kills: int, kills_per_trial: int, ws: Workspace, rng: random.Random) -> dict:
    cmd, folder = ws.command(tool)
    logs = os.path.join(ws.root, "logs")
    os.makedirs(logs, exist_ok=True)
    reference = os.path.join(ws.root, f"reference_{tool}")
    shutil.rmtree(folder, ignore_errors=True)
    ref_s, appeared_s = run_tool(cmd, os.path.join(logs, f"{tool}_reference.log"), folder)
    shutil.rmtree(reference, ignore_errors=True)
    shutil.move(folder, reference)
    trials, done = [], 0
    while done < kills:
        t = trial(cmd, folder, reference, (appeared_s, ref_s), min(kills_per_trial, kills - done), rng,
                  os.path.join(logs, f"{tool}_trial{len(trials)}.log"))
        trials.append(t)
        done += len(t["kills"])
    survived = sum(len(t["kills"]) for t in trials if t["survived"])
    return {"tool": tool, "kills": done, "kills_survived": survived, "trials": len(trials),
            "trials_survived": sum(t["survived"] for t in trials), "reference_s": round(ref_s, 1),
            "folder_appears_s": round(appeared_s, 1),
            "details": trials}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tool", default="train_interpreter", choices=(*TOOLS, "all"))
    p.add_argument("--kills", type=int, default=10, help="kills per tool (default %(default)s)")
    p.add_argument("--kills_per_trial", type=int, default=3,
                   help="kills before a trial's run may finish (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--quick", action="store_true", help="2 kills of train_interpreter.py (the CI test)")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one, deleted)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.tool, args.kills, args.kills_per_trial = "train_interpreter", 2, 2
    tools = TOOLS if args.tool == "all" else (args.tool,)
    rng = random.Random(args.seed)
    work = args.work or tempfile.mkdtemp(prefix="faults_")
    os.makedirs(work, exist_ok=True)
    try:
        ws = Workspace(work)
        results = [measure(t, args.kills, args.kills_per_trial, ws, rng) for t in tools]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = {"bench": "faults", "seed": args.seed, "kills_per_trial": args.kills_per_trial,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}",
           "tools": results}
    text = json.dumps(out)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if all(r["kills_survived"] == r["kills"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
