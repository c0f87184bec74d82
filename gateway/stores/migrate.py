"""One-shot move of campaign state from the layout before hash tags to today's: `python -m gateway
migrate-redis`.

The old layout (it only ever ran on one server: a cluster refused it):
  bidgw:camp:<cid>:cfg | :spend:<day> | :resv:<bucket> | :imps:<day>:<user>      bidgw:bid:<bid id>
The new one: `gateway.stores.keys`. Every old key moves in one Lua call, atomically (the old key is deleted
in the call that carries its value over), so a crash or a re-run never counts anything twice:
  * counters (spend, holds, impressions) are ADDED to the new key: what gateways of the new version already
    recorded there today is kept, and the day's spend is the sum of both;
  * a configuration is copied unless the new layout has one already (a seed-redis of the new layout wins);
  * a bid record is copied with its hold key renamed, and `bidgw:v2:bidtag:<bid id>` remembers its
    campaign's tag (an old bid id carries none), so a win notice for it still finds it, once.
TTLs carry over (for counters the longer one wins). Idempotent: a second run finds no old keys and changes
nothing. Feature rows (bidgw:f:...) are not touched: their layout did not change.

A rolling upgrade: run it once before the new version rolls out and once after the last old pod is gone
(old pods write old keys meanwhile; the second run moves those too). To move to a Redis Cluster, migrate
the server in place, then import its keys (`redis-cli --cluster import`): the hash tags decide the slots.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.errors import StoreError
from gateway.stores import keys
from gateway.stores.shards import Command, RedisShards, Script, run_on_shards

__all__ = ["MigrationReport", "add_arguments", "command", "migrate_redis"]

log = logging.getLogger(__name__)

BATCH: Final = 500  # keys moved per round trip
CALL_TIMEOUT_S: Final = 30.0

# KEYS: old key, new key, where a bid's campaign tag goes (the new key again for anything but a bid).
# ARGV: kind (add | cfg | bid), the bid's new hold key, its campaign tag.
# Returns what moved: the amount added (add), 1 (cfg, bid), 0 (nothing: the old key is already gone).
_MIGRATE_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local kind, ttl = ARGV[1], redis.call('PTTL', KEYS[1])
local moved = 1
if kind == 'add' then
  local current = redis.call('PTTL', KEYS[2])
  moved = tonumber(redis.call('GET', KEYS[1]))
  redis.call('INCRBY', KEYS[2], moved)
  if ttl > 0 and (current == -2 or (current > 0 and current < ttl)) then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
elseif kind == 'cfg' then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('SET', KEYS[2], redis.call('GET', KEYS[1]))
    if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  end
elseif kind == 'bid' then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    local record = redis.call('HGETALL', KEYS[1])
    redis.call('HSET', KEYS[2], unpack(record))
    redis.call('HSET', KEYS[2], 'hk', ARGV[2])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
    redis.call('SET', KEYS[3], ARGV[3])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
  end
end
redis.call('DEL', KEYS[1])
return moved
"""
MIGRATE_SCRIPT: Final = Script(_MIGRATE_LUA)

_OLD_CAMPAIGN: Final = keys.LEGACY_CAMPAIGN_PREFIX + ":"
_OLD_BID: Final = keys.LEGACY_BID_PREFIX + ":"
# An old key's campaign id is whatever lies between the prefix and the kind: ids may hold colons, so the
# kind is matched from the end (imps first: its user id comes last and may hold anything).
_IMPRESSIONS: Final = re.compile(r"(?P<cid>.+?):imps:(?P<day>\d{8}):(?P<user>.*)", re.DOTALL)
_SPEND: Final = re.compile(r"(?P<cid>.+):spend:(?P<day>\d{8})", re.DOTALL)
_HOLD: Final = re.compile(r"(?P<cid>.+):resv:(?P<bucket>-?\d+)", re.DOTALL)
_CONFIG: Final = re.compile(r"(?P<cid>.+):cfg", re.DOTALL)


@dataclass
class MigrationReport:
    configs: int = 0
    spend_keys: int = 0
    spend_micros: int = 0  # micro-USD moved (added to the new layout's spend)
    holds: int = 0
    impressions: int = 0
    bids: int = 0
    skipped: list[str] = field(default_factory=list)  # old-looking keys this migration does not understand

    @property
    def moved(self) -> int:
        return self.configs + self.spend_keys + self.holds + self.impressions + self.bids


@dataclass(frozen=True, slots=True)
class _Move:
    kind: str  # add | cfg | bid
    counter: str  # which MigrationReport field counts it
    old: str
    new: str
    tag_key: str = ""
    hold: str = ""
    tag: str = ""

    def command(self) -> Command:
        return MIGRATE_SCRIPT.command(
            [self.old, self.new, self.tag_key or self.new], [self.kind, self.hold, self.tag]
        )


def campaign_move(old: str) -> _Move | None:
    """Where an old `bidgw:camp:...` key goes; None for one this migration does not understand."""
    rest = old.removeprefix(_OLD_CAMPAIGN)
    if match := _IMPRESSIONS.fullmatch(rest):
        new = keys.impressions_key(match["cid"], match["day"], match["user"])
        return _Move("add", "impressions", old, new)
    if match := _SPEND.fullmatch(rest):
        return _Move("add", "spend_keys", old, keys.spend_key(match["cid"], match["day"]))
    if match := _HOLD.fullmatch(rest):
        return _Move("add", "holds", old, keys.hold_key(match["cid"], int(match["bucket"])))
    if match := _CONFIG.fullmatch(rest):
        return _Move("cfg", "configs", old, keys.config_key(match["cid"]))
    return None


def bid_move(old: str, record: dict[bytes, bytes]) -> _Move | None:
    """Where an old bid record goes, from its fields (campaign, hold key); None when it has no campaign."""
    campaign = record.get(b"c")
    if campaign is None:
        return None
    cid, bid_id = campaign.decode(), old.removeprefix(_OLD_BID)
    tag = keys.campaign_tag(cid)
    hold = b""
    old_hold = record.get(b"hk", b"").decode()
    if match := _HOLD.fullmatch(old_hold.removeprefix(_OLD_CAMPAIGN)):
        hold = keys.hold_key(cid, int(match["bucket"])).encode()
    return _Move(
        "bid", "bids", old, keys.bid_key(tag, bid_id), keys.legacy_bid_tag_key(bid_id), hold.decode(), tag
    )


async def migrate_redis(shards: RedisShards) -> MigrationReport:
    """Move every old-layout key of one server; raises StoreError (ValueError for a cluster)."""
    if shards.cluster:
        raise ValueError(
            "migrate-redis runs on the one server that holds the old layout (it never ran on a cluster); "
            "migrate there, then import into the cluster with redis-cli --cluster import"
        )
    shards.register(MIGRATE_SCRIPT)
    shard = shards.shard_for_slot(0)
    report = MigrationReport()
    for pattern in (f"{_OLD_CAMPAIGN}*", f"{_OLD_BID}*"):
        cursor = b"0"
        while True:
            [reply] = await _run(shards, [("SCAN", cursor, "MATCH", pattern, "COUNT", BATCH)], "scan")
            cursor, found = reply[0], [k.decode() if isinstance(k, bytes) else k for k in reply[1]]
            await _move(shards, found, report)
            if cursor in (b"0", "0", 0):
                break
    log.info("redis %s: %s", shard.name, report)
    return report


async def _move(shards: RedisShards, found: list[str], report: MigrationReport) -> None:
    moves: list[_Move] = []
    bids = [key for key in found if key.startswith(_OLD_BID)]
    if bids:
        records = await _run(shards, [("HGETALL", key) for key in bids], "read bids")
        for key, record in zip(bids, records, strict=True):
            move = bid_move(key, _record(record)) if record else None
            if move is not None:
                moves.append(move)
            elif record:
                report.skipped.append(key)
    for key in found:
        if key.startswith(_OLD_CAMPAIGN):
            move = campaign_move(key)
            if move is None:
                report.skipped.append(key)
            else:
                moves.append(move)
    if not moves:
        return
    results = await _run(shards, [move.command() for move in moves], "migrate")
    for move, moved in zip(moves, results, strict=True):
        amount = int(moved)
        if move.kind != "add" and amount == 0:
            continue  # gone since the scan (another run moved it)
        setattr(report, move.counter, getattr(report, move.counter) + 1)
        if move.counter == "spend_keys":
            report.spend_micros += amount


async def _run(shards: RedisShards, commands: list[Command], what: str) -> list[Any]:
    results = await shards.execute(
        shards.shard_for_slot(0), commands, time.monotonic() + CALL_TIMEOUT_S, what
    )
    refused = next((r for r in results if isinstance(r, Exception)), None)
    if refused is not None:
        raise StoreError(f"redis {what} refused: {refused}")
    return results


def _record(reply: Any) -> dict[bytes, bytes]:
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="default: BIDGW_REDIS_URL (the one server with the old layout)")


def command(args: argparse.Namespace) -> int:
    """The `migrate-redis` command: 0 when done (a second run reports nothing moved), 2 (one line on
    stderr) when it could not run."""
    from gateway.config import Settings  # noqa: PLC0415 - settings are read when the command runs

    url = args.redis_url or Settings().redis_url

    try:
        report = run_on_shards(url, migrate_redis, socket_timeout_s=CALL_TIMEOUT_S)
    except (StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"moved {report.moved} keys: {report.configs} configs, {report.spend_keys} spend keys "
        f"({report.spend_micros} micro-USD), {report.holds} holds, {report.impressions} impression counters, "
        f"{report.bids} bid records; {len(report.skipped)} old-looking keys left alone"
    )
    for key in report.skipped[:20]:
        print(f"  left alone: {key}")
    return 0
