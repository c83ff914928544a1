"""DatasetDDPM's second stage: DeepLabV3 trained on a synthetic dataset, scored on real labels.

The run folder is the original's, ``<exp_dir>/<steps>_<blocks>/deeplab_class_{K}_checkpoint_
{max_data}_filter_out_{portion:f}``. It holds one ``deeplab_epoch_{e}.pth`` per epoch (e from 0),
then config.json, log.txt, metrics.json, per_class_iou.md, test_val_miou.json, predictions/
and visualizations/. The epoch with the best mIoU on the validation set (the first
training_number images of validation_path, i.e. of training_path when that is empty: the
real labelled training images) is evaluated once on the real test set.

Under torchrun the processes train data-parallel (DistributedDataParallel): --deeplab_batch_size is
the global batch, each rank loads its slice of every batch of the epoch's one seeded order
(``GlobalBatchSlices``), BatchNorm takes its statistics over the global batch
(ddpmseg.common.global_batchnorm) and the loss is the global batch's mean over its labelled pixels,
so N processes compute the single-process gradient; only the dropout masks, drawn per process,
differ. Rank 0 alone writes the run folder, selects the epoch and tests it.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, ResNet101_Weights
from torchvision.models import segmentation
from tqdm import tqdm

from guided_diffusion.checkpoint import CheckpointError

from ..common.atomic import torch_save_atomic, write_json_atomic
from ..common.config import ConfigError, save_config
from ..data.folders import ImageLabelDataset, nearest_resize
from ..common.distributed import World, all_reduce_sum, init_world
from ..common.global_batchnorm import use_global_batchnorm
from ..common.metrics import IoUAccumulator
from ..common.precision import autocast, check_precision, check_precision_device, grad_scaler, weight_dtype
from ..common.paths import probe_output_dir, refuse_folder
from ..common.report import save_prediction
from ..common.runfiles import experiment_dir, write_run_metrics
from ..common.runlock import run_lock
from ..common.runlog import RunLog
from ..common.seeding import stream_generator, stream_seed
from ..data.synthetic import check_masks, keep_by_uncertainty, load_synthetic

# torchvision's ImageNet statistics: the original's 'deeplab' transform.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Backbone name (config CHOICES["deeplab_backbone"]) -> (torchvision builder, ImageNet weights).
# IMAGENET1K_V1 are the weights torchvision 0.11's pretrained_backbone=True loaded.
BACKBONES: dict[str, tuple[Callable[..., nn.Module], Any]] = {
    "resnet101": (segmentation.deeplabv3_resnet101, ResNet101_Weights.IMAGENET1K_V1),
    "resnet50": (segmentation.deeplabv3_resnet50, ResNet50_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": (segmentation.deeplabv3_mobilenet_v3_large, MobileNet_V3_Large_Weights.IMAGENET1K_V1),
}
LOG_EVERY = 10  # training iterations between loss lines (original: 10)
# The backbones downsample by 8 to 32; below this side the feature maps vanish.
MIN_RES = 32
_EPOCH_FILE = re.compile(r"deeplab_epoch_(\d+)\.pth$")


@dataclasses.dataclass
class DeepLabSettings:
    """train_deeplab.py's arguments; the defaults are the original's."""

    data_path: str = ""  # "" = <exp_dir>/<steps>_<blocks>/samples_<H>x<W>x3.npz
    resume: str = ""  # an epoch checkpoint to continue from; "" = the run folder's last epoch
    max_data: int = 0  # use the first max_data synthetic samples; 0 = all
    uncertainty_portion: float = 0.1  # fraction of the samples the uncertainty filter drops
    learning_rate: float = 1e-3  # Adam
    batch_size: int = 8
    num_epoch: int = 20
    workers: int = 4  # DataLoader processes (original: 12); 0 loads in the main process
    # The drop probability of the ASPP head's one dropout layer: torchvision's 0.5, which the original
    # trained with. 0 makes a torchrun run compute exactly what one process does (the masks are per process).
    aspp_dropout: float = 0.5
    # fp32 as published, bf16/fp16 autocast on CUDA, fp64 for exactness checks (ddpmseg.common.precision).
    precision: str = "fp32"

    def check(self) -> None:
        for key, option in (("batch_size", "--deeplab_batch_size"), ("num_epoch", "--num_epoch")):
            if getattr(self, key) < 1:
                raise ConfigError(f"{option} must be >= 1, got {getattr(self, key)}")
        for key in ("max_data", "workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"--{key} must be >= 0, got {getattr(self, key)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--deeplab_lr must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.uncertainty_portion < 1.0:
            raise ConfigError(f"--uncertainty_portion must be in [0, 1), got {self.uncertainty_portion}")
        if not 0.0 <= self.aspp_dropout < 1.0:
            raise ConfigError(f"--aspp_dropout must be in [0, 1), got {self.aspp_dropout}")
        check_precision(self.precision)


# -- paths ---------------------------------------------------------------------------------------
def deeplab_resolution(cfg: dict) -> int:
    """The DeepLab input side: ``deeplab_res``, or the config's working resolution when null."""
    res = cfg["dim"][0] if cfg["deeplab_res"] is None else cfg["deeplab_res"]
    if res < MIN_RES:
        raise ConfigError(f"'deeplab_res' must be >= {MIN_RES} (DeepLab downsamples by up to 32), got {res}")
    return res


def run_folder(cfg: dict, settings: DeepLabSettings) -> str:
    """The original's folder, e.g. ``.../deeplab_class_29_checkpoint_50000_filter_out_0.100000``."""
    name = f"deeplab_class_{cfg['number_class']}_checkpoint_{settings.max_data}" \
           f"_filter_out_{settings.uncertainty_portion:f}"
    return os.path.join(experiment_dir(cfg), name)


def default_data_path(cfg: dict) -> str:
    """Where generate_dataset.py writes the synthetic dataset of this config."""
    h, w = cfg["dim"][0], cfg["dim"][1]
    return os.path.join(experiment_dir(cfg), f"samples_{h}x{w}x3.npz")


def checkpoint_path(folder: str, epoch: int) -> str:
    return os.path.join(folder, f"deeplab_epoch_{epoch}.pth")


# -- model and data ------------------------------------------------------------------------------
def build_deeplab(backbone: str, num_classes: int, pretrained_backbone: bool) -> nn.Module:
    """torchvision DeepLabV3 with a fresh K-class head and no aux head; ImageNet backbone if asked."""
    if backbone not in BACKBONES:
        raise ConfigError(f"'deeplab_backbone' must be one of {list(BACKBONES)}, got {backbone!r}")
    builder, weights = BACKBONES[backbone]
    try:
        return builder(weights=None, weights_backbone=weights if pretrained_backbone else None,
                       num_classes=num_classes, aux_loss=False)
    except Exception as e:  # no network, a proxy, a damaged cache file: many types
        if not pretrained_backbone:
            raise
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        raise ConfigError(
            f"cannot load the ImageNet weights of the {backbone} backbone ({type(e).__name__}: {e}). "
            f"Set \"deeplab_pretrained_backbone\": false (--set deeplab_pretrained_backbone=false) to train "
            f"from scratch, or place {weights.url} at {cached}") from None


def set_dropout(model: nn.Module, p: float) -> nn.Module:
    """Every dropout layer of ``model`` (DeepLabV3's one, in the ASPP head) drops with probability ``p``."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
    return model


def input_transform(res: int) -> transforms.Compose:
    """PIL image -> normalized float [3,res,res], as the original's 'deeplab' transform."""
    return transforms.Compose([transforms.Resize((res, res)), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class SyntheticSet(Dataset):
    """The kept synthetic samples: (input [3,res,res], mask int64 [res,res] nearest-resized)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, indices: np.ndarray, res: int) -> None:
        # Indexing through ``indices`` avoids copying gigabytes of kept samples.
        self.images, self.masks, self.indices, self.res = images, masks, indices, res
        self.transform = input_transform(res)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.indices[i]
        label = nearest_resize(np.asarray(self.masks[j]), self.res).astype(np.int64)
        return self.transform(Image.fromarray(self.images[j])), torch.from_numpy(label)


class RealSet(Dataset):
    """A real labelled folder: ImageLabelDataset items at the label resolution plus the DeepLab "input"."""

    def __init__(self, data_dir: str, count_key: str, cfg: dict, res: int) -> None:
        self.labelled = ImageLabelDataset(data_dir, resolution=cfg["dim"][0], num_images=cfg[count_key],
                                          number_class=cfg["number_class"], ignore_label=cfg["ignore_label"],
                                          count_key=count_key)
        self.transform = input_transform(res)

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.labelled[i]
        with Image.open(item["path"]) as img:  # from the file, not the resized item["image"]
            item["input"] = self.transform(img.convert("RGB"))
        return item


class GlobalBatchSlices(Sampler[list[int]]):
    """This rank's part of every global batch of one epoch: a seeded permutation cut into full batches
    of ``batch_size`` (drop_last), rank r taking the r-th of the ``world.size`` equal slices of each.
    Together the ranks' k-th batches are the single process's k-th batch.

    Give the DataLoader the same ``generator``: it draws its base seed from it before the sampler
    draws the permutation, as with DataLoader(shuffle=True, generator=...), so one process trains
    on the order it always did."""

    def __init__(self, num_items: int, batch_size: int, world: World, generator: torch.Generator):
        self.num_items, self.generator = num_items, generator
        self.batch_size, self.per_rank, self.rank = batch_size, batch_size // world.size, world.rank

    def __iter__(self):
        order = torch.randperm(self.num_items, generator=self.generator).tolist()
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            first = start + self.rank * self.per_rank
            yield order[first:first + self.per_rank]

    def __len__(self) -> int:
        return self.num_items // self.batch_size


def predict(model: nn.Module, inputs: torch.Tensor, size: int) -> torch.Tensor:
    """Class ids [B,size,size]: the logits upsampled (bilinear, as DeepLab's own) then argmax."""
    logits = model(inputs)["out"]
    if logits.shape[-2:] != (size, size):
        logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    return logits.argmax(1)


def _loader_context() -> dict[str, Any]:
    # fork shares the in-memory synthetic arrays with the workers; spawn/forkserver would pickle them.
    return {"multiprocessing_context": "fork"} if "fork" in multiprocessing.get_all_start_methods() else {}


# -- the run -------------------------------------------------------------------------------------
class DeepLabRun:
    """One run folder; ``run_deeplab`` is the entry point."""

    def __init__(self, cfg: dict, settings: DeepLabSettings, log: Callable[[str], None],
                 world: World | None = None) -> None:
        settings.check()
        self.cfg, self.settings, self.log = cfg, settings, log
        self.world = world or init_world(cfg["device"])
        if settings.batch_size % self.world.size:
            raise ConfigError(f"--deeplab_batch_size {settings.batch_size} must be divisible by the number of "
                              f"processes ({self.world.size}): it is the global batch, split evenly")
        self.device = self.world.device
        check_precision_device(settings.precision, self.device)
        self.dtype = weight_dtype(settings.precision)
        self.res = deeplab_resolution(cfg)
        self.size = cfg["dim"][0]  # labels are scored at the config's working resolution
        self.folder = run_folder(cfg, settings)
        self.data_path = settings.data_path or default_data_path(cfg)
        # What a checkpoint must share with the run that continues or evaluates it.
        self.signature = {"deeplab_backbone": cfg["deeplab_backbone"], "number_class": cfg["number_class"],
                          "deeplab_res": self.res, "deeplab_pretrained_backbone": cfg["deeplab_pretrained_backbone"],
                          "uncertainty_filter": cfg["uncertainty_filter"], "seed": cfg["seed"],
                          "learning_rate": settings.learning_rate, "batch_size": settings.batch_size,
                          "aspp_dropout": settings.aspp_dropout, "precision": settings.precision}
        self.timings: dict[str, float] = {}

    # -- checks before anything is written ---------------------------------------------------
    def read_checkpoint(self, path: str) -> dict:
        """A checkpoint of this run's settings (ours, or the original's {'model_state_dict'})."""
        refuse_folder(path, "--resume", CheckpointError)
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or not a torch file
            raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e})") from None
        if not isinstance(ckpt, dict) or "model_state_dict" not in ckpt:
            raise CheckpointError(f"{path}: not a DeepLab epoch checkpoint (no 'model_state_dict')")
        if "epoch" not in ckpt:  # the original's files: the epoch is in the name
            match = _EPOCH_FILE.search(os.path.basename(path))
            if not match:
                raise CheckpointError(f"{path}: has no epoch; name it deeplab_epoch_<e>.pth as the original did")
            ckpt["epoch"] = int(match.group(1))
        diff = {k: (v, self.signature[k]) for k, v in ckpt.get("signature", {}).items()
                if k in self.signature and v != self.signature[k]}
        if diff:
            listed = ", ".join(f"{k} {old!r} (now {new!r})" for k, (old, new) in diff.items())
            raise CheckpointError(f"{path} was trained with {listed}; use the same settings, or another "
                                  f"exp_dir for a new run")
        return ckpt

    def resume_point(self) -> dict | None:
        """The checkpoint training continues from, or None for a fresh start."""
        s = self.settings
        if s.resume:
            return self.read_checkpoint(s.resume)
        done = 0  # epochs 0..done-1 exist: each file is complete, since it was renamed into place
        while done < s.num_epoch and os.path.isfile(checkpoint_path(self.folder, done)):
            done += 1
        return self.read_checkpoint(checkpoint_path(self.folder, done - 1)) if done else None

    def load_synthetic(self) -> SyntheticSet:
        c, s, t0 = self.cfg, self.settings, time.time()
        images, masks, uncertainty = load_synthetic(self.data_path, s.max_data)
        check_masks(masks, c["number_class"], c["ignore_label"], where=self.data_path)
        if s.max_data > len(images):
            # The published script asks for 50000 whatever was generated: use them all, and say so.
            self.log(f"warning: --max_data {s.max_data}, but {self.data_path} holds only {len(images)} samples: "
                     f"training on all {len(images)} (generate more for the published amount)")
        kept = keep_by_uncertainty(uncertainty, s.uncertainty_portion, c["uncertainty_filter"])
        if len(kept) < s.batch_size:
            raise ConfigError(f"only {len(kept)} synthetic samples are kept, fewer than --deeplab_batch_size "
                              f"{s.batch_size}: an epoch would have no full batch")
        self.synthetic = {"data_path": self.data_path, "max_data": s.max_data, "used": len(uncertainty),
                          "kept": len(kept),
                          "uncertainty_filter": c["uncertainty_filter"],
                          "uncertainty_portion": s.uncertainty_portion,
                          "image_size": list(images.shape[1:3])}
        self.timings["load_synthetic_s"] = time.time() - t0
        self.log(f"synthetic dataset {self.data_path}: {len(uncertainty)} samples of {images.shape[1]}x"
                 f"{images.shape[2]}, {len(kept)} kept ({c['uncertainty_filter']} filter, portion "
                 f"{s.uncertainty_portion})")
        return SyntheticSet(images, masks, kept, self.res)

    def prepare(self) -> None:
        """Open every input and build the model; raises before the run folder is touched."""
        c, s = self.cfg, self.settings
        self.val_set = RealSet(c["validation_path"] or c["training_path"], "training_number", c, self.res)
        self.test_set = RealSet(c["testing_path"], "testing_number", c, self.res)
        self.start = self.resume_point()
        self.first_epoch = self.start["epoch"] + 1 if self.start else 0
        if s.resume and self.first_epoch >= s.num_epoch:
            raise ConfigError(f"--resume {s.resume} is epoch {self.first_epoch - 1}, so --num_epoch {s.num_epoch} "
                              f"leaves nothing to train; raise --num_epoch")
        self.train_set = self.load_synthetic() if self.first_epoch < s.num_epoch else None
        if self.train_set is None:
            self.synthetic = self.start.get("synthetic", {})
        torch.manual_seed(stream_seed("deeplab_head", c["seed"]))
        # Resuming replaces every weight, so the ImageNet backbone is only fetched for a fresh start.
        pretrained = c["deeplab_pretrained_backbone"] and self.start is None
        self.model = set_dropout(build_deeplab(c["deeplab_backbone"], c["number_class"], pretrained), s.aspp_dropout)
        if self.world.size > 1:
            use_global_batchnorm(self.model)
        self.model.to(self.device, self.dtype)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=s.learning_rate)
        self.scaler = grad_scaler(s.precision)
        if self.start:
            self.load_state(self.start, s.resume or checkpoint_path(self.folder, self.first_epoch - 1))

    def load_state(self, ckpt: dict, path: str) -> None:
        try:
            self.model.load_state_dict(ckpt["model_state_dict"])
            if "optimizer_state_dict" in ckpt:  # the original saved the model only
                self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
            if self.scaler is not None and "scaler_state_dict" in ckpt:
                self.scaler.load_state_dict(ckpt["scaler_state_dict"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path} does not fit a {self.cfg['deeplab_backbone']} DeepLabV3 with "
                                  f"{self.cfg['number_class']} classes ({str(e).splitlines()[0]})") from None

    # -- training ----------------------------------------------------------------------------
    def train(self) -> list[int]:
        """Train the epochs not yet in the run folder; returns their numbers."""
        s, c = self.settings, self.cfg
        epochs = list(range(self.first_epoch, s.num_epoch))
        if not epochs:
            self.log(f"all {s.num_epoch} epochs exist in {self.folder}; evaluating only")
            return []
        if self.first_epoch:
            self.log(f"resuming after epoch {self.first_epoch - 1}: training epochs {epochs}")
        self.ddp_model = self.model
        if self.world.size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        t0 = time.time()
        for epoch in epochs:
            t_epoch = time.time()
            loss = self.train_epoch(epoch)
            if not self.world.is_main:
                continue
            state = {"epoch": epoch, "model_state_dict": self.model.state_dict(),
                     "optimizer_state_dict": self.optimizer.state_dict(), "signature": self.signature,
                     "synthetic": self.synthetic, "mean_loss": loss, "train_s": time.time() - t_epoch}
            if self.scaler is not None:
                state["scaler_state_dict"] = self.scaler.state_dict()
            torch_save_atomic(state, checkpoint_path(self.folder, epoch))
            self.log(f"epoch {epoch}: mean loss {loss:.4f}, saved {checkpoint_path(self.folder, epoch)}")
        self.timings["train_s"] = time.time() - t0
        return epochs

    def train_epoch(self, epoch: int) -> float:
        """One epoch; returns its mean loss (of the global batches)."""
        s, w, c = self.settings, self.world, self.cfg
        workers = {"num_workers": s.workers, **_loader_context()} if s.workers else {}
        # Streams of their own per epoch (order and ASPP dropout): a resumed run trains exactly as
        # an uninterrupted one would. Each rank draws its own dropout masks; a world of one keeps the
        # stream one process always drew.
        order = stream_generator("deeplab_shuffle", c["seed"], epoch)
        loader = DataLoader(self.train_set, batch_sampler=GlobalBatchSlices(len(self.train_set), s.batch_size, w, order),
                            generator=order, pin_memory=self.device.type == "cuda", **workers)
        torch.manual_seed(stream_seed("deeplab_dropout", c["seed"], epoch) if w.size == 1 else
                          stream_seed("deeplab_rank_dropout", c["seed"], epoch, w.rank))
        ignore = c["ignore_label"] if c["ignore_label"] is not None else -100  # -100: torch's "none"
        criterion = nn.CrossEntropyLoss(ignore_index=ignore, reduction="sum")
        self.model.train()
        total = 0.0
        for i, (x, y) in enumerate(tqdm(loader, desc=f"epoch {epoch}", unit="batch", dynamic_ncols=True,
                                        disable=not w.is_main)):
            x, y = x.to(self.device, self.dtype, non_blocking=True), y.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(s.precision, self.device):
                logits = self.ddp_model(x)["out"]
            loss_sum = criterion(logits.to(self.dtype), y)
            # The global batch's mean over its labelled pixels, as CrossEntropyLoss's mean is for one
            # process: this rank's sum over the pixels counted on every rank, times the number of
            # ranks, whose gradients DistributedDataParallel averages.
            sums = all_reduce_sum(torch.stack([loss_sum.detach().double(), (y != ignore).sum().double()]))
            loss = loss_sum / (sums[1].item() / w.size)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            batch_loss = (sums[0] / sums[1]).item()
            total += batch_loss
            if i % LOG_EVERY == 0:
                self.log(f"epoch {epoch} iteration {i} loss {batch_loss:.4f}")
        return total / len(loader)

    # -- selection and test ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, data: RealSet, out_dir: str | None = None) -> dict:
        """IoU of the current model on ``data``; predictions and comparisons go to ``out_dir`` if given."""
        c = self.cfg
        self.model.eval()
        iou = IoUAccumulator(c["number_class"], c["ignore_label"], c["class_names"])
        for batch in DataLoader(data, batch_size=self.settings.batch_size):
            with autocast(self.settings.precision, self.device):
                pred = predict(self.model, batch["input"].to(self.device, self.dtype), self.size).cpu()
            iou.update(pred, batch["label"], batch["stem"])
            for j, stem in enumerate(batch["stem"] if out_dir else []):
                save_prediction(out_dir, stem, pred[j], image=batch["image"][j], gt=batch["label"][j],
                                palette=c["palette"], class_names=c["class_names"])
        return iou.result()

    def select_epoch(self) -> tuple[int, dict[int, float], dict[int, float], dict[int, float]]:
        """(best epoch, validation mIoU, training seconds and mean training loss per epoch) over the
        folder's epochs."""
        t0 = time.time()
        val, train_s, loss = {}, {}, {}
        for epoch in range(self.settings.num_epoch):
            path = checkpoint_path(self.folder, epoch)
            if not os.path.isfile(path):  # epochs before an explicit --resume may live elsewhere
                continue
            ckpt = self.read_checkpoint(path)
            self.load_state(ckpt, path)
            val[epoch] = self.evaluate(self.val_set)["miou"]
            train_s[epoch] = ckpt.get("train_s")
            loss[epoch] = ckpt.get("mean_loss")
            self.log(f"epoch {epoch}: validation mIoU {100 * val[epoch]:.2f}")
        self.timings["validation_s"] = time.time() - t0
        best = max(val, key=lambda e: (val[e], -e))  # the earliest of equal scores, as the original
        return best, val, train_s, loss

    def test(self, epoch: int) -> dict:
        t0 = time.time()
        path = checkpoint_path(self.folder, epoch)
        self.load_state(self.read_checkpoint(path), path)
        result = self.evaluate(self.test_set, out_dir=self.folder)
        self.timings["test_s"] = time.time() - t0
        return result


def write_deeplab_metrics(run: DeepLabRun, result: dict, best: int, val: dict[int, float],
                          train_s: dict[int, float], loss: dict[int, float], trained: list[int],
                          t_start: float) -> dict:
    """metrics.json, per_class_iou.md and the original's test_val_miou.json; returns the metrics."""
    c, folder = run.cfg, run.folder
    metrics = write_run_metrics(
        folder, result, run.device, run.timings, t_start, c["class_names"],
        head={"best_epoch": best, "best_validation_miou": val[best],
              "validation_miou": {str(e): v for e, v in val.items()}},
        tail={"synthetic": run.synthetic, "trained_epochs": trained,
              "settings": {**dataclasses.asdict(run.settings), "data_path": run.data_path},
              "deeplab_backbone": c["deeplab_backbone"], "deeplab_res": run.res,
              "deeplab_pretrained_backbone": c["deeplab_pretrained_backbone"],
              "epoch_train_s": {str(e): s for e, s in train_s.items()},
              "epoch_mean_loss": {str(e): v for e, v in loss.items()}})
    write_json_atomic(os.path.join(folder, "test_val_miou.json"),
                      {"Validation": metrics["best_validation_miou"], "Testing": metrics["miou"]})
    run.log(f"test mIoU {100 * metrics['miou']:.2f} (classes present: {100 * metrics['miou_present']:.2f}) with "
            f"epoch {best} (validation mIoU {100 * val[best]:.2f}); outputs in {folder}")
    return metrics


def run_deeplab(cfg: dict, settings: DeepLabSettings, log: RunLog | None = None) -> dict | None:
    """Train (or resume) DeepLabV3 on the synthetic dataset, select an epoch, test it; returns the metrics.
    Under torchrun every rank trains, and rank 0 alone writes, evaluates and returns the metrics (the
    others return None once the last epoch is trained)."""
    t_start = time.time()
    world = init_world(cfg["device"])
    log = (log or RunLog()) if world.is_main else None
    run = DeepLabRun(cfg, settings, log or (lambda msg: None), world)
    if world.is_main:
        probe_output_dir(run.folder, "the DeepLab run folder (under exp_dir)")
    run.prepare()
    with run_lock(run.folder, run.log, main=world.is_main):
        if log is not None:
            log.attach(os.path.join(run.folder, "log.txt"))
            save_config(cfg, os.path.join(run.folder, "config.json"))
            log(f"DeepLabV3 {cfg['deeplab_backbone']} at {run.res} px on {run.device} ({settings.precision}, "
                f"{world.size} process{'es' if world.size > 1 else ''}), run folder {run.folder}")
        trained = run.train()
        if log is None:
            return None
        best, val, train_s, loss = run.select_epoch()
        result = run.test(best)
        return write_deeplab_metrics(run, result, best, val, train_s, loss, trained, t_start)
