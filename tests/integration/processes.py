"""Find processes by their command line, to prove that no server outlives its launcher."""

from __future__ import annotations

import time
from pathlib import Path


def pids_with_argument(fragment: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split(") ", 1)[1][:1]
        except OSError:
            continue
        if fragment in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def wait_until_gone(fragment: str, timeout_s: float) -> list[int]:
    """The pids still alive after `timeout_s` (empty when all went away)."""
    deadline = time.monotonic() + timeout_s
    while (alive := pids_with_argument(fragment)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive
