"""Peak resident memory of a process tree, sampled from /proc (Linux only)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(root_pid: int) -> int:
    """Return the summed RSS of ``root_pid`` and all its descendants right now."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            statm = (entry / "statm").read_text().split()
        except OSError:
            continue
        pid = int(entry.name)
        # Field 4 of /proc/<pid>/stat is the parent pid; the name before it may hold spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(statm[1]) * PAGE_BYTES
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class PeakMemorySampler:
    """Samples :func:`tree_rss_bytes` of this process tree in a background thread."""

    def __init__(self, interval_s: float = 0.25, root_pid: int | None = None) -> None:
        self.interval_s = interval_s
        self.root_pid = root_pid or os.getpid()
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, tree_rss_bytes(self.root_pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemorySampler:
        """Start sampling in the background."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop sampling; ``peak_bytes`` holds the largest sample."""
        self._stop.set()
        self._thread.join()
