"""How BIDGW_REDIS_URL names one server or a cluster, and what a bad one says (no server needed)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config import Settings
from gateway.stores.local_cache import LocalCache
from gateway.stores.shards import RedisShards, Script, parse_redis_url


def test_one_server_urls_pass_through() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://cache.internal:6380/2", "unix:///run/redis.sock"):
        target = parse_redis_url(url)
        assert not target.cluster
        assert target.url == url


def test_a_cluster_url_names_its_seed_nodes_and_credentials() -> None:
    target = parse_redis_url("redis+cluster://gw:s%40cret@10.0.0.5:6379,10.0.0.6:6379,[::1]:7000")
    assert target.cluster
    assert target.seeds == (("10.0.0.5", 6379), ("10.0.0.6", 6379), ("::1", 7000))
    assert (target.username, target.password, target.tls) == ("gw", "s@cret", False)
    assert parse_redis_url("rediss+cluster://10.0.0.5:6379").tls


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:6379", "scheme must be"),
        ("redis+cluster://", "at least one cluster node"),
        ("redis+cluster://10.0.0.5", "is not host:port"),
        ("redis+cluster://10.0.0.5:notaport", "is not host:port"),
        ("redis+cluster://10.0.0.5:70000", "is not host:port"),
        ("redis+cluster://10.0.0.5:6379/3", "only database 0"),
    ],
)
def test_a_bad_url_gets_a_clear_error(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_redis_url(url)
    # At start-up, through the settings: one validation error naming the URL (never a stack in a bid).
    with pytest.raises(ValidationError, match=says):
        Settings(store_backend="redis", redis_url=url)


def test_shards_build_without_io() -> None:
    shards = RedisShards.from_url("redis+cluster://127.0.0.1:1", socket_timeout_s=0.01)
    assert shards.cluster
    assert not shards.known  # the slot map is read on first use, not here
    standalone = RedisShards.from_url("redis://127.0.0.1:1/0", socket_timeout_s=0.01)
    assert standalone.known
    assert [s.name for s in standalone.shards()] == ["127.0.0.1:1"]


def test_scripts_are_sent_by_sha() -> None:
    script = Script("return 1")
    assert script.sha == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
    assert script.command(["k"], [1]) == ("EVALSHA", script.sha, 1, "k", 1)


def test_local_cache_expires_and_evicts_oldest_first() -> None:
    cache: LocalCache[int] = LocalCache(maxsize=2, ttl_s=10.0)
    cache.put("a", 1, now=0.0)
    cache.put("b", 2, now=1.0)
    assert cache.get_many(["a", "b", "c"], now=5.0) == ({"a": 1, "b": 2}, ["c"])
    assert cache.get("a", None, now=10.0) is None  # expired at 10
    cache.put("c", 3, now=11.0)
    cache.put("d", 4, now=11.0)  # full: "b", the oldest left, goes
    assert cache.get("b", None, now=11.0) is None
    assert (cache.get("c", None, now=11.0), cache.get("d", None, now=11.0)) == (3, 4)
    with pytest.raises(ValueError, match="maxsize"):
        LocalCache(0, 1.0)
