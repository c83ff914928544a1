"""One run per folder: a second live run is refused naming the holder's pid; a killed run's lock
is taken over (with its unfinished atomic writes' temp files removed). Holders are real processes."""
import json
import os
import signal
import subprocess
import sys

import pytest

from ddpmseg.commands import train_ddpm
from conftest import shapes64
from ddpmseg.common.runlock import LOCK_NAME, RunLockError, acquire
from test_ddpm_train import TINY

HOLD = ("import sys, time\n"
        "from ddpmseg.common.runlock import acquire\n"
        "acquire(sys.argv[1])\n"
        "open(sys.argv[1] + '/.model_0.pth.abcd1234.tmp', 'w').write('half a file')\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n")


@pytest.fixture
def holder(tmp_path):
    """A live process holding tmp_path/run; yields (folder, process)."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield folder, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_second_run_is_refused_with_the_holders_pid(holder):
    folder, proc = holder
    with pytest.raises(RunLockError, match=rf"in use by another run: pid {proc.pid} on "):
        acquire(str(folder), log=lambda m: None)
    assert (folder / ".model_0.pth.abcd1234.tmp").exists()  # a live run's temp files are its own


def test_train_ddpm_refuses_a_held_log_dir_with_one_line(holder, capsys):
    folder, proc = holder
    data = str(shapes64() / "unlabeled")
    assert train_ddpm.main(["--data_dir", data, "--log_dir", str(folder), *TINY, "--max_steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"pid {proc.pid}" in err[0]
    assert sorted(p.name for p in folder.iterdir()) == sorted([LOCK_NAME, ".model_0.pth.abcd1234.tmp"])


def test_a_killed_runs_lock_is_taken_over(holder):
    folder, proc = holder
    (folder / "other_tool").mkdir()
    (folder / "other_tool" / LOCK_NAME).write_text("{}")
    (folder / "other_tool" / ".x.npz.zz99zz99.tmp").write_text("another run's")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == proc.pid  # the dead run's file stays
    lines = []
    lock = acquire(str(folder), log=lines.append)
    assert len(lines) == 1 and f"pid {proc.pid}" in lines[0] and "removed 1 temp file" in lines[0]
    assert not (folder / ".model_0.pth.abcd1234.tmp").exists()
    assert (folder / "other_tool" / ".x.npz.zz99zz99.tmp").exists()  # a folder with its own lock is left alone
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (folder / LOCK_NAME).exists()


def test_a_released_lock_is_free_and_says_nothing(tmp_path):
    lines = []
    acquire(str(tmp_path / "run"), log=lines.append).release()
    acquire(str(tmp_path / "run"), log=lines.append).release()
    assert lines == [] and os.listdir(tmp_path / "run") == []
