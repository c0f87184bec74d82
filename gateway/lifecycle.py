"""Graceful shutdown: on SIGTERM, readiness turns false at once, then (after `drain_delay_s`, time for the
load balancer to stop routing here) uvicorn stops accepting, lets in-flight bids finish within its
graceful-shutdown timeout, and runs the lifespan's cleanup.

uvicorn owns SIGTERM/SIGINT while it serves (`Server.capture_signals`); the lifespan starts inside that
window, so wrapping the handler found there chains ours in front of uvicorn's without touching its
internals. Signals reach only the main thread: a server run in a thread (tests) keeps uvicorn's own.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], Any]


def drain_on_sigterm(mark_draining: Callable[[], None], drain_delay_s: float) -> None:
    """Call from inside the running event loop (the lifespan)."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # Only flag-setting and a self-pipe write here: a signal handler may interrupt the main thread
        # while it holds any lock, so it must not take one (no threads, no Event.set, no logging).
        mark_draining()
        if drain_delay_s <= 0:
            previous(signum, frame)
            return
        loop.call_soon_threadsafe(_stop_later, loop, drain_delay_s, previous, signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def _stop_later(loop: asyncio.AbstractEventLoop, delay_s: float, stop: Handler, signum: int) -> None:
    log.info("SIGTERM: readiness is false; stopping in %.1fs, then in-flight bids finish", delay_s)
    loop.call_later(delay_s, stop, signum, None)
