"""report.html of a run folder: what the run was, how well it did, where it fails and how it trained.

Built from the folder's files alone (config.json, metrics.json, the ensemble members' files, the
PNGs of visualizations/), so it can be rebuilt for any finished run folder:

    ddpmseg report RUN_FOLDER [RUN_FOLDER ...]

Interpreter runs (`ddpmseg train`, `ddpmseg evaluate`) and DeepLab runs (`ddpmseg deeplab`) get one;
a `ddpmseg segment` output folder (it holds segments.csv) gets its gallery (ddpmseg.common.gallery). The
page embeds its plots and refers to the folder's own PNGs by relative path, so it opens from the
file system with no server, and the folder can be moved or copied as a whole.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

from .atomic import write_text_atomic
from .errors import DataError
from .gallery import SEGMENTS_CSV, write_gallery
from .html_page import REPORT_FILE, cell, embedded_png, esc, linked_png, number, page, section, shown, table
from .report_plots import confusion_matrix, epoch_curve, iou_bars, member_curves
from .safeload import load_plain

# The config keys the report lists, in this order (config.json, linked from the page, has them all):
# those of every run, then those of the pixel-classifier ensemble or of DeepLab (its metrics.json has the rest).
CONFIG_SHOWN = ("category", "model_type", "model_path", "steps", "blocks", "dim", "training_number", "testing_number",
                "seed", "training_path", "testing_path")
ENSEMBLE_SHOWN = ("input_activations", "share_noise", "model_num", "augmentation_copies", "batch_size",
                  "learning_rate", "optimizer", "max_epochs", "early_stop_after_epoch", "early_stop_patience",
                  "regularizer", "voting", "tta", "refine")
DEEPLAB_SHOWN = ("deeplab_backbone", "deeplab_res", "deeplab_pretrained_backbone")
# Where select_features.py writes by default, beside the run folders of one exp_dir.
SELECTION_FOLDER = "feature_selection"
# Compared images shown enlarged: a 64 px panel is too small to judge at 1x.
IMAGE_SCALE = 2


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def source_folder(folder: str, metrics: dict) -> str:
    """The folder of the run that trained the models: ``folder`` itself, or for an evaluate.py output
    the run it names in ``trained_in``. That path is relative to where evaluate.py ran; from elsewhere,
    the folder above (evaluate.py's default output lies inside the run) when it holds the members."""
    trained_in = metrics.get("trained_in")
    if not trained_in:
        return folder
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(trained_in) and os.path.isfile(os.path.join(parent, "model_0.pth")):
        return parent
    return trained_in


def config_section(folder: str, cfg: dict, metrics: dict) -> str:
    keys = CONFIG_SHOWN + (DEEPLAB_SHOWN if "best_epoch" in metrics else ENSEMBLE_SHOWN)
    rows = [[cell(k), cell(json.dumps(cfg[k]) if not isinstance(cfg[k], str) else cfg[k])] for k in keys if k in cfg]
    for key, value in (metrics.get("settings") or {}).items():  # a DeepLab run's training settings
        rows.append([cell(f"deeplab {key}"), cell(json.dumps(value) if not isinstance(value, str) else value)])
    if metrics.get("trained_in"):
        rows.append([cell("ensemble trained in"), cell(metrics["trained_in"])])
    link = ("<p>Every key: <a href=\"config.json\">config.json</a>.</p>" if os.path.isfile(
        os.path.join(folder, "config.json")) else "<p class=\"note\">This folder has no config.json.</p>")
    return section("Configuration", table(["key", "value"], rows), link, anchor="config")


def scores_section(metrics: dict) -> str:
    names = list(metrics["per_class_iou"])
    classes, union = metrics["classes"], metrics["union"]
    present = [union[c] > 0 for c in classes]
    rows = [[cell(c), cell(name), number(metrics["per_class_iou"][name], ["per_class_iou", name], "%"),
             cell("yes" if p else "no")] for c, name, p in zip(classes, names, present)]
    rows.append([cell(""), cell(f"mIoU ({len(classes)} classes)"), number(metrics["miou"], ["miou"], "%"), cell("")])
    rows.append([cell(""), cell(f"mIoU over present ({sum(present)} classes)"),
                 number(metrics["miou_present"], ["miou_present"], "%"), cell("")])
    if "refine" in metrics:
        rows.append([cell(""), cell("mIoU of the ensemble before refinement"),
                     number(metrics["refine"]["miou_before"], ["refine", "miou_before"], "%"), cell("")])
    voting = f", {metrics['voting']} voting" if "voting" in metrics else ""
    headline = (f"<p class=\"headline\">mIoU <b>{shown(metrics['miou'], '%')}</b> over {metrics['num_images']} "
                f"test images{esc(voting)} (classes present: {shown(metrics['miou_present'], '%')})</p>")
    parts = [headline, "<div class=\"side\">", table(["id", "class", "IoU %", "present"], rows),
             embedded_png(iou_bars(names, [metrics["per_class_iou"][n] for n in names], present, metrics["miou"]),
                          "per-class IoU"), "</div>"]
    if "by_voting" in metrics:
        parts.append("<p>Every voting mode on the same members:</p>" + table(
            ["voting", "mIoU %", "mIoU over present %"],
            [[cell(m), number(v["miou"], ["by_voting", m, "miou"], "%"),
              number(v["miou_present"], ["by_voting", m, "miou_present"], "%")] for m, v in metrics["by_voting"].items()]))
    return section("Scores", *parts, anchor="scores")


def normalised_confusion(counts: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """The ``rows`` (class ids) of a confusion matrix of pixel counts, each divided by its sum: the
    fraction of a ground-truth class's pixels given each prediction (NaN for a class with no pixel)."""
    picked = np.asarray(counts, dtype=np.float64)[list(rows)]
    totals = picked.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, picked / totals, np.nan)


def confusion_section(metrics: dict, class_names: Sequence[str]) -> str:
    if "confusion" not in metrics:
        return section("Confusion matrix", "<p class=\"note\">metrics.json holds no confusion matrix.</p>",
                       anchor="confusion")
    classes = metrics["classes"]
    counts = np.asarray(metrics["confusion"], dtype=np.int64)
    # Columns: the scored classes, plus any other id (the ignore label) that was predicted somewhere.
    columns = sorted(set(classes) | {c for c in range(len(counts)) if counts[:, c].any()})
    full = normalised_confusion(counts, classes)
    shown_part = full[:, columns]
    names = [class_names[c] for c in classes]
    column_names = [class_names[c] for c in columns]
    empty = [class_names[c] for c, row in zip(classes, full) if np.isnan(row).all()]
    note = (f"<p class=\"note\">No test pixel of {', '.join(map(esc, empty))} (grey rows).</p>" if empty else "")
    numbers = table(["ground truth \\ prediction", *column_names],
                    [[cell(n)] + [f"<td class=\"num\">{'' if np.isnan(v) else f'{v:.3f}'}</td>" for v in row]
                     for n, row in zip(names, shown_part)])
    return section("Confusion matrix",
                   "<p>Each row: the fraction of that ground-truth class's test pixels given each prediction "
                   "(rows sum to 1; counts in metrics.json <code>confusion</code>).</p>", note,
                   embedded_png(confusion_matrix(shown_part, names, column_names), "confusion matrix"),
                   f"<details><summary>as numbers</summary><div id=\"confusion-numbers\">{numbers}</div></details>",
                   anchor="confusion")


def member_training(folder: str, cfg: dict, metrics: dict) -> list[str]:
    """The ensemble's training: a table of how each member stopped, and each member's curve."""
    source = source_folder(folder, metrics)
    count = cfg.get("model_num", len(metrics.get("members", {})))
    rows, curves, titles, stops, missing = [], [], [], [], []
    for m in range(count):
        path = os.path.join(source, f"model_{m}.pth")
        if not os.path.isfile(path):
            missing.append(m)
            continue
        saved = load_plain(path, "an ensemble member")
        stats = saved.get("stats", {})
        best = stats.get("best_batch_loss")
        rows.append([cell(m), cell(stats.get("iterations", "")), cell(stats.get("epochs", "")),
                     cell(stats.get("stopped", "")),
                     cell(f"{best:.4f}" if best is not None and math.isfinite(best) else "\u2014")])
        if saved.get("curve") and saved["curve"]["batch"]:
            curves.append(saved["curve"])
            titles.append(f"member {m}: {stats.get('stopped', '')} at {stats.get('iterations')}")
            stops.append(stats.get("iterations"))
    parts = [table(["member", "iterations", "epochs", "stopped by", "best batch loss"], rows),
             "<p class=\"note\">Best batch loss: the lowest one early stopping saw (a dash: training ended before "
             "early_stop_after_epoch).</p>"]
    if missing:
        parts.append(f"<p class=\"note\">No member file for members {missing} in {esc(source)}.</p>")
    if curves:
        every = curves[0]["every"]
        parts.append(f"<p>Mean training loss (blue) and pixel accuracy (orange) over every {every} batches; "
                     "the red line is where the member stopped.</p>")
        parts.append(embedded_png(member_curves(curves, titles, stops), "training curves"))
    elif rows:
        parts.append("<p class=\"note\">The member files hold no training curve.</p>")
    return parts


def deeplab_training(metrics: dict) -> list[str]:
    """A DeepLab run's epochs: validation mIoU, mean training loss and time per epoch."""
    epochs = sorted(int(e) for e in metrics["validation_miou"])
    losses = metrics.get("epoch_mean_loss", {})
    rows = [[cell(e), number(metrics["validation_miou"][str(e)], ["validation_miou", str(e)], "%"),
             cell(f"{losses[str(e)]:.4f}" if losses.get(str(e)) is not None else "\u2014"),
             number(metrics.get("epoch_train_s", {}).get(str(e)), ["epoch_train_s", str(e)], "s")] for e in epochs]
    plot = epoch_curve(epochs, [metrics["validation_miou"][str(e)] for e in epochs],
                       [losses.get(str(e)) for e in epochs], metrics["best_epoch"])
    return [f"<p>The epoch with the best validation mIoU, {metrics['best_epoch']}, is the one tested.</p>",
            "<div class=\"side\">", table(["epoch", "validation mIoU %", "mean loss", "train s"], rows),
            embedded_png(plot, "epochs"), "</div>"]


def training_section(folder: str, cfg: dict, metrics: dict) -> str:
    parts = deeplab_training(metrics) if "best_epoch" in metrics else member_training(folder, cfg, metrics)
    return section("Training", *parts, anchor="training")


def worst_first(per_image: dict[str, float | None]) -> list[str]:
    """Image names by per-image mIoU, lowest first; images without one (no class present) last."""
    return sorted(per_image, key=lambda s: (per_image[s] is None, per_image[s] or 0.0, s))


def images_section(folder: str, metrics: dict) -> str:
    per_image = metrics.get("per_image_miou")
    if not per_image:
        return section("Test images", "<p class=\"note\">metrics.json holds no per-image scores.</p>",
                       anchor="images")
    vis = os.path.join(folder, "visualizations")
    # An ensemble's runs have an uncertainty per image and per pixel; a single DeepLab model has none.
    uncertainty = metrics.get("uncertainty")
    rows = []
    for rank, stem in enumerate(worst_first(per_image), 1):
        compare = os.path.join(vis, stem + "_compare.png")
        row = [cell(rank), cell(stem), number(per_image[stem], ["per_image_miou", stem], "%"),
               f"<td>{linked_png(compare, folder, stem, IMAGE_SCALE)}</td>" if os.path.isfile(compare)
               else cell("no comparison image")]
        if uncertainty is not None:
            heat = os.path.join(vis, stem + "_uncertainty.png")
            row[3:3] = [number(uncertainty.get(stem), ["uncertainty", stem], "nats")]
            row.append(f"<td>{linked_png(heat, folder, stem + ' uncertainty', IMAGE_SCALE)}</td>"
                       if os.path.isfile(heat) else cell("\u2014"))
        rows.append(row)
    header = ["rank", "image", "mIoU %", "image | ground truth | prediction"]
    intro = ("<p>Per-image mIoU: the mean IoU over the classes present in that image's ground truth or "
             "prediction.")
    if uncertainty is not None:
        header[3:] = ["uncertainty", header[3], "uncertainty"]
        intro += (" Uncertainty: the ensemble's disagreement (mutual information, nats), per image the mean of "
                  "its most uncertain pixels; in the map black is certain and pale yellow is ln 2 or more "
                  "(the members split).")
    return section("Test images, worst first", intro + "</p>", table(header, rows), anchor="images")


def selection_section(folder: str, cfg: dict, metrics: dict) -> str:
    """select_features.py's heatmap when this run's steps x blocks are the ones it selected; else nothing."""
    run = os.path.abspath(source_folder(folder, metrics))
    selection_dir = os.path.join(os.path.dirname(run), SELECTION_FOLDER)
    report = os.path.join(selection_dir, "selection.json")
    if not os.path.isfile(report):
        return ""
    selected = read_json(report).get("selected")
    if not selected or (sorted(selected["steps"]), sorted(selected["blocks"])) != (
            sorted(cfg.get("steps", [])), sorted(cfg.get("blocks", []))):
        return ""
    heatmap = os.path.join(selection_dir, "selection_heatmap.png")
    picture = linked_png(heatmap, folder, "selection heatmap") if os.path.isfile(heatmap) else ""
    return section("Feature selection",
                   f"<p>select_features.py chose steps {esc(selected['steps'])} x blocks {esc(selected['blocks'])} "
                   f"(cross-validated mIoU {shown(selected['miou'], '%')} \u00b1 {shown(selected['miou_std'], '%')} "
                   f"on the training images; red frames: the chosen cells). "
                   f"<a href=\"{esc(os.path.relpath(report, folder))}\">selection.json</a></p>", picture,
                   anchor="selection")


def resources_section(metrics: dict) -> str:
    rows = [[cell(k), number(v, ["timings_s", k], "s")] for k, v in metrics.get("timings_s", {}).items()]
    rows += [[cell(f"training run: {k}"), number(v, ["training_timings_s", k], "s")]
             for k, v in metrics.get("training_timings_s", {}).items()]
    memory = [[cell(label), number(metrics[key], [key], "MB")]
              for key, label in (("peak_rss_mb", "peak resident memory (process)"),
                                 ("peak_cuda_mb", "peak CUDA memory allocated")) if key in metrics]
    return section("Time and memory", "<div class=\"side\">", table(["step", "seconds"], rows),
                   table(["memory", "MiB"], memory), "</div>",
                   f"<p class=\"note\">device {esc(metrics.get('device', 'unknown'))}</p>", anchor="resources")


def build_run_report(folder: str) -> str:
    """Write ``folder``/report.html from the run folder's files; returns its path."""
    metrics_path = os.path.join(folder, "metrics.json")
    if not os.path.isfile(metrics_path):
        raise DataError(f"{folder} has no metrics.json: give the folder of a finished run")
    metrics = read_json(metrics_path)
    config_path = os.path.join(folder, "config.json")
    cfg = read_json(config_path) if os.path.isfile(config_path) else {}
    class_names = cfg.get("class_names") or [str(c) for c in range(len(metrics["union"]))]
    kind = "DeepLab" if "best_epoch" in metrics else ("evaluation" if "trained_in" in metrics else "interpreter")
    title = f"{cfg.get('category') or os.path.basename(os.path.abspath(folder))}: {kind} run"
    sections = [scores_section(metrics), config_section(folder, cfg, metrics), confusion_section(metrics, class_names),
                training_section(folder, cfg, metrics), images_section(folder, metrics),
                selection_section(folder, cfg, metrics), resources_section(metrics)]
    path = os.path.join(folder, REPORT_FILE)
    write_text_atomic(path, page(title, f"run folder {os.path.abspath(folder)}", [s for s in sections if s]))
    return path


def build_report(folder: str) -> str:
    """report.html of ``folder``: a segment.py output's gallery, or a run folder's report."""
    if os.path.isfile(os.path.join(folder, SEGMENTS_CSV)):
        return write_gallery(folder)
    return build_run_report(folder)
