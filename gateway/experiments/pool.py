"""One scoring chain per model version: Triton fleet, circuit breaker, and a micro-batcher of its own.

A Triton request names one model version, so bids are coalesced per version: each version's bids queue
in that version's MicroBatcher and never wait for, or fail with, another version's. A failing candidate
version opens its own breaker, not the control's. Shadow scoring calls a version's `upstream` (breaker
and fleet, no batcher): its jobs are batched by the shadow worker and never queue beside live bids.

Chains are made on first use (a configuration naming a new version) and kept until shutdown: a version
dropped from the configuration may still have bids in flight, and an idle chain costs one connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.core.ports import Scorer

__all__ = ["ChainFactory", "ScorerPool", "VersionChain"]


@dataclass(slots=True)
class VersionChain:
    upstream: Scorer  # unbatched: what shadow scoring calls
    live: Scorer  # the micro-batcher bids call
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run in order at shutdown


ChainFactory = Callable[[str], Awaitable[VersionChain]]


class ScorerPool:
    def __init__(self, factory: ChainFactory, preset: dict[str, VersionChain] | None = None) -> None:
        """`preset`: chains the app already built (the default version's, whose stats it exports); the
        pool does not close those."""
        self._factory = factory
        self._chains: dict[str, VersionChain] = dict(preset or {})
        self._owned: list[VersionChain] = []
        self._lock = asyncio.Lock()

    def known(self, version: str) -> VersionChain | None:
        return self._chains.get(version)

    async def chain(self, version: str) -> VersionChain:
        found = self._chains.get(version)
        if found is not None:
            return found
        async with self._lock:  # two configurations at once must not both build the version's chain
            found = self._chains.get(version)
            if found is None:
                found = self._chains[version] = await self._factory(version)
                self._owned.append(found)
            return found

    async def aclose(self) -> None:
        for chain in self._owned:
            for close in chain.closers:
                await close()
        self._owned.clear()
