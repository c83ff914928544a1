"""Datasets: image/label folders (``folders``), augmentation and test-time views (``augment``),
the demo's procedural shapes (``procedural``) and DatasetDDPM's synthetic .npz sets (``synthetic``).

The names of ``folders`` are re-exported: this was the module ``ddpmseg.data`` before issue 17.
"""
from .folders import (IMAGE_EXTENSIONS, MASK_EXTENSIONS, DataError, ImageLabelDataset, drop_small_regions,
                      image_transform, label_path, list_image_files, load_rgb, nearest_resize, read_mask,
                      resolve_folders, to_rgb)

__all__ = ["IMAGE_EXTENSIONS", "MASK_EXTENSIONS", "DataError", "ImageLabelDataset", "drop_small_regions",
           "image_transform", "label_path", "list_image_files", "load_rgb", "nearest_resize", "read_mask",
           "resolve_folders", "to_rgb"]
