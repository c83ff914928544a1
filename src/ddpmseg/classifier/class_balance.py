"""How the classes of the training pixels weigh in the ensemble's training (config "class_weighting").

Everything is computed from the labels of the pixels actually trained on: after the ignore label and
min_region_pixels removal, and, when cross-fitting or probing, the fold's pixels only. With n_c pixels
of class c among N, f_c = n_c / N is the class's share.

- "inverse_frequency": class c's cross-entropy is weighted by w_c proportional to 1 / f_c;
- "sqrt_inverse_frequency": by w_c proportional to 1 / sqrt(f_c), a milder correction;

both normalised so that the pixel-weighted mean weight, sum_c f_c w_c, is 1: a batch's weighted loss
(the batch mean of w_y * CE, ``weighted_mean``) then has the scale of the unweighted loss, so the
learning rate keeps its meaning. A class without a training pixel gets weight 0 (the interpreter
warns about such classes already; nothing could be weighted up for them).

- "balanced_sampling": the loss is unweighted, but each batch is drawn so that every class present is
  equally likely (``BalancedBatchSource``).
"""
from __future__ import annotations

import torch

WEIGHTED = {"inverse_frequency": 1.0, "sqrt_inverse_frequency": 0.5}  # mode -> the power of 1 / f_c


def class_weights(labels: torch.Tensor, num_classes: int, mode: str) -> torch.Tensor | None:
    """float64 [num_classes] weights of ``mode`` for training labels ``labels`` (int64 [N]); None for the
    modes that weight every pixel 1 ("none", "balanced_sampling")."""
    if mode not in WEIGHTED:
        return None
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes].to(torch.float64)
    share = counts / counts.sum()
    present = counts > 0
    raw = torch.zeros(num_classes, dtype=torch.float64)
    raw[present] = share[present] ** -WEIGHTED[mode]
    return raw / (share * raw).sum()  # sum_c f_c w_c = 1: the pixel-weighted mean weight is 1


def weighted_mean(per_pixel: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per member [M]: the mean over the batch of ``per_pixel`` losses [M, B], each times its class's weight.

    Divided by the batch size, not by the batch's weight sum (as torch's ``cross_entropy(weight=)``
    would): with mean weight 1 over the training pixels this is an unbiased estimate of the weighted
    loss over all of them, and equals the plain mean when ``weights`` is None."""
    if weights is None:
        return per_pixel.mean(1)
    return (per_pixel * weights[labels]).mean(1)


class BalancedBatchSource:
    """Batches in which every class present in the training pixels is equally likely.

    Each pixel of a member's batch is a class drawn uniformly among the classes that have training
    pixels, then one of that class's pixels drawn uniformly, with replacement (a rare class's few pixels
    recur within an epoch). Each member draws from its own generator: its "member" stream of the
    seeding table (ddpmseg.common.seeding.member_seed), the one that shuffles its epochs without
    balanced sampling, so a member's batches do not depend on its companions. An epoch is the same
    number of batches as without. ``epoch_states`` are the generators' states before the next batch is
    drawn, so a snapshot and ``restore`` replay the same batches.
    """

    def __init__(self, generators: list[torch.Generator], labels: torch.Tensor, batch_size: int, num_classes: int):
        self.generators, self.batch_size = generators, batch_size
        counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
        self.present = counts.nonzero().flatten()
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts  # where each class's pixels begin in ``by_class``
        self.by_class = torch.argsort(labels, stable=True)  # pixel indices grouped by class, ascending

    @property
    def epoch_states(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def restore(self, epoch_states: list[torch.Tensor]) -> None:
        for g, state in zip(self.generators, epoch_states):
            g.set_state(state)

    def indices(self, step: int) -> torch.Tensor:
        """Pixel indices [members, batch_size] of the next batch (``step`` is not needed: every batch is drawn
        afresh); called once per iteration, in order."""
        rows = []
        for g in self.generators:
            cls = self.present[torch.randint(len(self.present), (self.batch_size,), generator=g)]
            # uniform in [0, n_c): float64 resolves any pixel count below 2^53
            u = torch.rand(self.batch_size, generator=g, dtype=torch.float64)
            within = torch.minimum((u * self.counts[cls]).long(), self.counts[cls] - 1)
            rows.append(self.by_class[self.starts[cls] + within])
        return torch.stack(rows)
