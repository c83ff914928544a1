"""ddpm-seg: label-efficient semantic segmentation with frozen diffusion-model features.

The package is grouped by stage; a sub-package imports only from those before it:
``common`` (files, seeds, errors, config, reports, command-line plumbing) < ``data`` (datasets,
augmentation) < ``features`` (DDPM and other backbones, the feature store) < ``classifier`` (the
pixel ensemble and the interpreter job) and ``ddpm`` (training and sampling a DDPM) <
``datasetddpm`` (labelled samples, DeepLab) < ``demo``. tests/test_layering.py holds it to that.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# The modules' names before the sub-packages (issue 17): ``import ddpmseg.segmenter`` and the
# like still give the module itself, so scripts written against the flat layout keep working.
# ("data" and "features" are sub-packages now; ddpmseg.features re-exports its README names.)
MOVED = {
    "atomic": "common.atomic", "seeding": "common.seeding", "runlock": "common.runlock",
    "safeload": "common.safeload", "numerics": "common.numerics", "distributed": "common.distributed",
    "device": "common.device", "errors": "common.errors", "report": "common.report", "metrics": "common.metrics",
    "cli": "common.cli", "config": "common.config", "refine_settings": "common.refine_settings",
    "runfiles": "common.runfiles", "runlog": "common.runlog", "model_flags": "common.model_flags",
    "augment": "data.augment", "procedural": "data.procedural", "synthetic": "data.synthetic",
    "backbones": "features.backbones", "store": "features.store",
    "ensemble": "classifier.ensemble", "etf": "classifier.etf", "train": "classifier.train",
    "predict": "classifier.predict", "crossfit": "classifier.crossfit", "refine": "classifier.refine",
    "interpreter": "classifier.interpreter", "segmenter": "classifier.segmenter",
    "segment_folder": "classifier.segment_folder", "suggest": "classifier.suggest",
    "feature_selection": "classifier.feature_selection", "selection_heatmap": "classifier.selection_heatmap",
    "new_experiment": "classifier.new_experiment",
    "ddpm_train": "ddpm.train", "sampling": "ddpm.sampling", "generate": "ddpm.generate",
    "labelling": "datasetddpm.labelling", "deeplab": "datasetddpm.deeplab",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``ddpmseg.<old name>`` and answers with the module at its new place (the same
    object, so one module never runs twice under two names)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.rpartition(".")
        if package == __name__ and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module):
        # The import system has just set the old name's spec on the module: give it back its own.
        module.__spec__ = importlib.util.spec_from_file_location(module.__name__, module.__file__)


sys.meta_path.append(_MovedModules())


def _register_backbones() -> None:
    """Register every backbone family (config validation needs them; common cannot import features)."""
    from . import features  # noqa: F401


from .common import config as _config  # noqa: E402  (after the finder: config's own imports may use old names)

_config.register_backbones = _register_backbones
