"""Session fixtures that start real servers on free loopback ports (no mocks stand in for the system)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.local_triton import LocalTriton, free_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def triton() -> Iterator[LocalTriton]:
    """The real local Triton (pytriton wheel, CPU configs) serving the committed triton_models/."""
    with LocalTriton(free_ports(), startup_timeout_s=180.0) as server:
        yield server
