"""Which step trains the ensemble faster here: all members in one batched step, or one member after
another (each an ensemble of one, run on plain 2-D kernels with fused Adam).

Both train every member exactly as it trains alone (its own init, batches, dropout masks and early
stopping; tests/test_train.py replays the two in float64), so the choice changes only the speed.
Which wins depends on the device, the thread count and the feature size (bench/ensemble_throughput.py
measures both), so the config key ``ensemble_step`` "auto" measures it on the run itself: a short
probe times iterations of each on the run's own shapes and feature rows before training starts.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Protocol

STEP_MODES = ("batched", "per_member")  # what "auto" chooses between
# The probe: PROBE_WARMUP untimed iterations of each candidate (the first allocates Adam's state and
# the autograd buffers), then PROBE_ROUNDS rounds, each timing PROBE_STEPS batched iterations and
# PROBE_STEPS * M one-member iterations, so both train the same member-batches. The rounds alternate
# the candidates, so a burst of load from other jobs on a shared machine falls on both, and the median
# of the rounds' time ratios decides, which two disturbed rounds of five cannot move. With 10 members
# the probe trains 322 member-batches: 0.6% of the shortest celebamask64 run (4 epochs of 1,262
# batches and 50 more, 10 members), so it costs little where the choice matters.
PROBE_WARMUP, PROBE_ROUNDS, PROBE_STEPS = 2, 5, 3
# "auto" probes only when the probe is at most this share of the shortest training the run can have
# (in member-batches); shorter runs (tests, smoke runs) take the batched step without probing.
PROBE_SHARE = 0.1


class Stepper(Protocol):
    def step(self) -> object:
        """One training iteration of its members; returns once the losses are on the host."""


# (members, folder) -> a fresh trainer of those members writing into the folder
MakeStepper = Callable[[list[int], str], Stepper]


@dataclass(frozen=True)
class StepChoice:
    """The step a training call uses, the config's setting and why; the probe's rates when it ran."""

    setting: str
    chosen: str
    reason: str
    probe_pixels_per_s: dict[str, int] | None = None
    probe_s: float | None = None

    def groups(self, members: list[int]) -> list[list[int]]:
        """The member groups trained one after another: all together, or one at a time."""
        return [members] if self.chosen == "batched" else [[m] for m in members]

    def record(self) -> dict:
        """What each member's stats keep (its file, metrics.json)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        return f"ensemble step: {self.chosen} (ensemble_step {self.setting}: {self.reason})"


def probe_work(num_members: int) -> int:
    """Member-batches the probe trains: warm-up and rounds of both candidates."""
    return PROBE_WARMUP * (num_members + 1) + 2 * PROBE_ROUNDS * PROBE_STEPS * num_members


def timed_steps(stepper: Stepper, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        stepper.step()
    return time.perf_counter() - t0


def probe(members: list[int], batch_size: int, make: MakeStepper) -> tuple[dict[str, int], str]:
    """Each candidate's median pixels/s over the probe's rounds, and the faster one (by the median of the
    rounds' time ratios). Trains throwaway copies of the members in a temporary folder: their random
    streams are rebuilt from the seed for the real training, which the probe leaves untouched."""
    M = len(members)
    with tempfile.TemporaryDirectory() as tmp:
        candidates = {"batched": (make(members, tmp), PROBE_STEPS),
                      "per_member": (make(members[:1], tmp), PROBE_STEPS * M)}
        for stepper, _ in candidates.values():
            timed_steps(stepper, PROBE_WARMUP)
        seconds = {name: [] for name in candidates}
        for _ in range(PROBE_ROUNDS):
            for name, (stepper, n) in candidates.items():
                seconds[name].append(timed_steps(stepper, n))
    ratio = statistics.median(p / b for p, b in zip(seconds["per_member"], seconds["batched"]))
    pixels = PROBE_STEPS * M * batch_size  # per round, either candidate
    rates = {name: round(pixels / statistics.median(t)) for name, t in seconds.items()}
    return rates, "per_member" if ratio < 1 else "batched"


def choose_step(setting: str, members: list[int], snapshot_members: list[int] | None, min_iterations: int,
                batch_size: int, make: MakeStepper) -> StepChoice:
    """The step for training ``members``: the config's ``setting`` unless it is "auto"; then the one an
    interrupted run's snapshot (``snapshot_members``) continues, else the probe's faster one when the
    training (at least ``min_iterations`` per member) is long enough to pay for the probe."""
    M = len(members)
    if setting != "auto":
        return StepChoice(setting, setting, "set in the config")
    if M == 1:
        return StepChoice(setting, "per_member", "one member, so both steps are the same")
    if snapshot_members == members:
        return StepChoice(setting, "batched", "continues the interrupted run's snapshot of all its members")
    if snapshot_members == members[:1]:
        return StepChoice(setting, "per_member", f"continues the interrupted run's snapshot of member {members[0]}")
    work, training = probe_work(M), M * min_iterations
    if work > PROBE_SHARE * training:
        return StepChoice(setting, "batched", f"no probe: its {work} member-batches would be over "
                                              f"{PROBE_SHARE:.0%} of the at least {training} this training takes")
    t0 = time.perf_counter()
    rates, chosen = probe(members, batch_size, make)
    seconds = time.perf_counter() - t0
    shown = ", ".join(f"{name} {rate:,}" for name, rate in rates.items())
    return StepChoice(setting, chosen, f"probe of {PROBE_ROUNDS} rounds on these shapes, {seconds:.1f} s: "
                                       f"{shown} pixels/s", rates, round(seconds, 2))
