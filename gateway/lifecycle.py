"""Graceful shutdown: on SIGTERM, readiness turns false at once, then (after `drain_delay_s`, time for the
load balancer to stop routing here) uvicorn stops accepting, lets in-flight bids finish within its
graceful-shutdown timeout, and runs the lifespan's cleanup.

uvicorn owns SIGTERM/SIGINT while it serves (`Server.capture_signals`); the lifespan starts inside that
window, so wrapping the handler found there chains ours in front of uvicorn's without touching its
internals. Signals reach only the main thread: a server run in a thread (tests) keeps uvicorn's own.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], Any]


def drain_on_sigterm(mark_draining: Callable[[], None], drain_delay_s: float) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        mark_draining()
        log.info("SIGTERM: readiness is false; stopping in %.1fs after in-flight bids finish", drain_delay_s)
        if drain_delay_s <= 0:
            previous(signum, frame)
            return
        timer = threading.Timer(drain_delay_s, previous, (signum, frame))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_sigterm)
