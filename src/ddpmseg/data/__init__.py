"""Datasets: image/label folders (``folders``), augmentation and test-time views (``augment``),
the demo's procedural shapes (``procedural``) and DatasetDDPM's synthetic .npz sets (``synthetic``)."""
