"""Click and conversion events in Redis, joined to the bid record a win notice already marked won.

Each event is one script on the bid record's slot: it checks the record exists and was won, marks the
event once per bid id (a repeat answers duplicate: exchanges and ad servers fire pixels more than once)
and returns the record, whose model attribution (`gateway.stores.attribution`) feeds the calibration
counters. The record lives `win_dedupe_ttl_s` after its win; an event later than that is unknown.

Decisions (docs/experiments.md):
  * a click on a bid that was not won (yet) is refused (NOT_WON): calibration counts clicks per
    impression, and an impression is a win notice; the sender retries or the event is lost, never
    counted against the wrong denominator;
  * a conversion without a recorded click is refused (NOT_CLICKED): pCVR is P(conversion | click), so a
    view-through conversion has no prediction to be compared with. It is counted (`view_through`) but
    recorded nowhere else.

The shadow scorer annotates records with its predictions (`annotate_shadow`) only while they are not yet
won: the win notice decides, once, whether the impression counts for the shadow version too (`ws`).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import ResponseError

from gateway.errors import StoreError
from gateway.stores import keys
from gateway.stores.attribution import ModelAttribution, attribution_of
from gateway.stores.shards import RedisShards, Script

__all__ = ["FeedbackKind", "FeedbackLedger", "FeedbackOutcome", "FeedbackResult"]


class FeedbackKind(enum.Enum):
    CLICK = "k"  # the record field the event sets
    CONVERSION = "v"


class FeedbackOutcome(enum.Enum):
    RECORDED = 1
    DUPLICATE = 0
    UNKNOWN_BID = -1
    NOT_WON = -2
    NOT_CLICKED = -3


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    outcome: FeedbackOutcome
    bid_id: str
    attribution: ModelAttribution | None = None  # RECORDED only
    shadow_counted: bool = False  # the win counted this impression for the shadow version too


# KEYS: the bid record. ARGV: the field this event sets, the field it requires ('' for none).
# Returns {code} or {1, HGETALL of the record}: codes as FeedbackOutcome.
_EVENT_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
if redis.call('HGET', KEYS[1], 'w') ~= '1' then return {-2} end
if redis.call('HGET', KEYS[1], ARGV[1]) == '1' then return {0} end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], ARGV[2]) ~= '1' then return {-3} end
redis.call('HSET', KEYS[1], ARGV[1], '1')
return {1, redis.call('HGETALL', KEYS[1])}
"""

# KEYS: bid records. ARGV: shadow version, then (pCTR, pCVR) per record. A record already won (its
# impression counted without the shadow) or expired is left alone. Returns how many were annotated.
_SHADOW_LUA: Final = """
local n = 0
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('HGET', KEYS[i], 'w') ~= '1' then
    redis.call('HSET', KEYS[i], 'sv', ARGV[1], 'sc', ARGV[2 * i], 'sp', ARGV[2 * i + 1])
    n = n + 1
  end
end
return n
"""

EVENT_SCRIPT: Final = Script(_EVENT_LUA)
SHADOW_SCRIPT: Final = Script(_SHADOW_LUA)


def _pairs(reply: Any) -> dict[bytes, bytes]:
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


class FeedbackLedger:
    """Click and conversion notices, and shadow annotations, on the bid records of `shards`."""

    def __init__(self, shards: RedisShards, *, timeout_s: float = 1.0) -> None:
        self._shards = shards
        self.timeout_s = timeout_s
        for script in (EVENT_SCRIPT, SHADOW_SCRIPT):
            shards.register(script)

    async def record(self, kind: FeedbackKind, bid_id: str, deadline: float) -> FeedbackResult:
        """Mark the event on the bid's record once. Raises StoreError when Redis fails."""
        tag = keys.bid_tag(bid_id)
        if tag is None:
            return FeedbackResult(FeedbackOutcome.UNKNOWN_BID, bid_id)
        required = FeedbackKind.CLICK.value if kind is FeedbackKind.CONVERSION else ""
        reply = await self._run(
            keys.bid_key(tag, bid_id),
            EVENT_SCRIPT.command([keys.bid_key(tag, bid_id)], (kind.value, required)),
            deadline,
            f"record {kind.name.lower()}",
        )
        outcome = FeedbackOutcome(int(reply[0]))
        if outcome is not FeedbackOutcome.RECORDED:
            return FeedbackResult(outcome, bid_id)
        record = _pairs(reply[1])
        return FeedbackResult(outcome, bid_id, attribution_of(record), record.get(b"ws") == b"1")

    async def annotate_shadow(
        self,
        version: str,
        bid_ids: Sequence[str],
        pctr: Sequence[float],
        pcvr: Sequence[float],
        deadline: float,
    ) -> int:
        """Write the shadow version's predictions beside the live ones; returns the records annotated."""
        annotated = 0
        by_tag: dict[str, list[int]] = {}
        for i, bid_id in enumerate(bid_ids):
            tag = keys.bid_tag(bid_id)
            if tag is not None:
                by_tag.setdefault(tag, []).append(i)
        for tag, rows in by_tag.items():
            record_keys = [keys.bid_key(tag, bid_ids[i]) for i in rows]
            args: list[str] = [version]
            for i in rows:
                args += (repr(float(pctr[i])), repr(float(pcvr[i])))
            annotated += int(
                await self._run(
                    record_keys[0], SHADOW_SCRIPT.command(record_keys, args), deadline, "annotate shadow"
                )
            )
        return annotated

    async def _run(self, key: str, command: Any, deadline: float, what: str) -> Any:
        deadline = min(deadline, time.monotonic() + self.timeout_s)
        await self._shards.discover(deadline)
        [result] = await self._shards.execute(self._shards.shard_for_key(key), [command], deadline, what)
        if isinstance(result, ResponseError):
            raise StoreError(f"redis refused {what}: {result}")
        return result
