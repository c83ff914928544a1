"""ensemble_step.choose_step: the config's step, the one an interrupted run continues, no probe for a
short training, and the probe picking the faster of two steppers whose speeds are known.

The steppers here sleep a fixed time per iteration: what the probe measures is only how long
``step`` takes, so a known sleep gives it a known answer (tests/test_train.py runs it on real training)."""
import time

import pytest

from ddpmseg.classifier.ensemble_step import PROBE_ROUNDS, PROBE_STEPS, PROBE_WARMUP, choose_step, probe_work


class SleepingStepper:
    def __init__(self, seconds_per_member_batch: float, members: list[int], calls: list):
        self.seconds, self.members, self.calls = seconds_per_member_batch * len(members), members, calls

    def step(self):
        self.calls.append(tuple(self.members))
        time.sleep(self.seconds)


def steppers(batched_s: float, one_member_s: float, calls: list):
    """A MakeStepper whose batched step costs ``batched_s`` per member-batch, one member ``one_member_s``."""
    return lambda members, folder: SleepingStepper(batched_s if len(members) > 1 else one_member_s, members, calls)


def never(members, folder):
    raise AssertionError("no probe expected")


LONG = 10**6  # iterations per member: any probe is a small share of that


@pytest.mark.parametrize("setting", ["batched", "per_member"])
def test_a_set_step_is_used_without_probing(setting):
    choice = choose_step(setting, [0, 1, 2], None, LONG, 64, never)
    assert (choice.chosen, choice.reason) == (setting, "set in the config")
    assert choice.groups([0, 1, 2]) == ([[0, 1, 2]] if setting == "batched" else [[0], [1], [2]])


def test_auto_follows_an_interrupted_runs_snapshot_and_one_member_needs_no_choice():
    assert choose_step("auto", [3, 4], [3, 4], LONG, 64, never).chosen == "batched"
    assert choose_step("auto", [3, 4], [3], LONG, 64, never).chosen == "per_member"
    assert choose_step("auto", [5], None, LONG, 64, never).chosen == "per_member"


def test_auto_does_not_probe_when_the_probe_would_cost_over_a_tenth_of_training():
    M = 4
    work = probe_work(M)
    assert work == PROBE_WARMUP * (M + 1) + 2 * PROBE_ROUNDS * PROBE_STEPS * M
    shortest = -(-work * 10 // M)  # iterations per member at which the probe is exactly a tenth
    assert choose_step("auto", list(range(M)), None, shortest - 1, 64, never).chosen == "batched"
    calls = []
    choose_step("auto", list(range(M)), None, shortest, 64, steppers(0, 0, calls))
    assert len(calls) == (PROBE_WARMUP + PROBE_ROUNDS * PROBE_STEPS) * 2 + PROBE_ROUNDS * PROBE_STEPS * (M - 1)


@pytest.mark.parametrize("batched_s,one_member_s,faster", [(2e-3, 2e-4, "per_member"), (2e-4, 2e-3, "batched")])
def test_the_probe_picks_the_faster_step_and_reports_both_rates(batched_s, one_member_s, faster):
    """10x apart, so the load of a shared machine (which only lengthens a sleep) cannot swap them; the
    rates are pixels over the sleep, within that slack; the probe trains member 0 alone, then all."""
    calls = []
    choice = choose_step("auto", [0, 1, 2], None, LONG, 64, steppers(batched_s, one_member_s, calls))
    assert choice.chosen == faster and choice.setting == "auto"
    assert set(calls) == {(0, 1, 2), (0,)}
    for name, seconds in (("batched", batched_s), ("per_member", one_member_s)):
        assert 0.3 / seconds * 64 < choice.probe_pixels_per_s[name] <= 64 / seconds  # sleeps only run long
    assert choice.record()["probe_pixels_per_s"] == choice.probe_pixels_per_s and choice.probe_s > 0
    assert choice.describe().startswith(f"ensemble step: {faster} (ensemble_step auto: probe of {PROBE_ROUNDS} rounds")
