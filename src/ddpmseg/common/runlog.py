"""A run's log: lines printed above the progress bars and kept in the run folder's log.txt."""
from __future__ import annotations

import time

from tqdm import tqdm


class RunLog:
    """Prints and keeps lines; once the run folder exists they also go to its ``log.txt``."""

    def __init__(self):
        self.lines: list[str] = []
        self.path: str | None = None

    def __call__(self, msg: str) -> None:
        tqdm.write(msg)
        self.detail(msg)

    def detail(self, msg: str) -> None:
        """Keep ``msg`` in log.txt without printing it: per-image details that one printed line sums up."""
        if self.path:
            with open(self.path, "a") as f:
                f.write(msg + "\n")
        else:
            self.lines.append(msg)

    def attach(self, path: str) -> None:
        self.path = path
        with open(path, "a") as f:
            f.write(f"--- run started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.writelines(line + "\n" for line in self.lines)
