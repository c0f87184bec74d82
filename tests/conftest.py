"""Session fixtures that start real servers on free loopback ports (no mocks stand in for the system)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.local_triton import LocalTriton, free_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything collecting imported (torch, schemathesis, hypothesis, the gateway...) lives for the whole
    run: move it out of the cyclic GC's reach. A full collection traverses it otherwise, about 170 ms here
    with this suite's 365k objects, and it runs in this process, so it pauses every in-thread gateway and
    load generator at once: bids answered after their tmax, Redis lookups timing out, seen in full-suite
    runs only. Frozen, a full collection costs well under a millisecond."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def triton() -> Iterator[LocalTriton]:
    """The real local Triton (pytriton wheel, CPU configs) serving the committed triton_models/."""
    with LocalTriton(free_ports(), startup_timeout_s=180.0) as server:
        yield server
