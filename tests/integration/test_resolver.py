"""Name resolution against a real DNS server on loopback and the system resolver."""

from __future__ import annotations

import time

import pytest

from gateway.errors import DiscoveryError
from gateway.scoring.resolver import resolve
from gateway.scoring.targets import DnsName, parse_target
from tests.integration.dns_server import TestDnsServer, free_udp_port

pytestmark = pytest.mark.integration


async def test_a_dns_server_s_answer_sorted_and_following_its_changes() -> None:
    with TestDnsServer() as dns:
        dns.set("triton.test", ["127.0.0.13", "127.0.0.11"])
        name = parse_target(f"dns://{dns.address}/triton.test:8001").name
        assert name is not None
        assert await resolve(name, 2.0) == ("127.0.0.11:8001", "127.0.0.13:8001")
        dns.set("triton.test", ["127.0.0.12"])
        assert await resolve(name, 2.0) == ("127.0.0.12:8001",)


async def test_unknown_and_empty_names_are_discovery_errors() -> None:
    with TestDnsServer() as dns:
        dns.set("empty.test", [])
        server = ("127.0.0.1", dns.port)
        with pytest.raises(DiscoveryError, match=r"nothing\.test resolved to no address"):
            await resolve(DnsName("nothing.test", 8001, server), 2.0)
        with pytest.raises(DiscoveryError, match="no address"):
            await resolve(DnsName("empty.test", 8001, server), 2.0)


async def test_a_dns_server_that_never_answers_fails_within_the_timeout() -> None:
    silent = ("127.0.0.1", free_udp_port())  # nothing listens: UDP queries go unanswered
    started = time.monotonic()
    with pytest.raises(DiscoveryError, match="could not resolve"):
        await resolve(DnsName("triton.test", 8001, silent), 0.3)
    assert time.monotonic() - started < 1.5


async def test_the_system_resolver_reads_the_hosts_file() -> None:
    assert "127.0.0.1:8001" in await resolve(DnsName("localhost", 8001), 2.0)
    with pytest.raises(DiscoveryError, match="failed"):
        await resolve(DnsName("no-such-host.invalid", 8001), 2.0)
