"""Resolve a Triton name to the gRPC addresses of its servers, now (one answer per call, no caching).

The system resolver (getaddrinfo: /etc/hosts, resolv.conf search domains, so a Kubernetes short name like
`triton-headless` works) unless the target names a DNS server (`dns://10.0.0.10:53/name:port`), which is
asked directly with dnspython for A and AAAA records. Every failure is a `DiscoveryError`; the caller
(`gateway.scoring.fleet`) keeps the addresses it had.
"""

from __future__ import annotations

import asyncio
import socket

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from gateway.errors import DiscoveryError
from gateway.scoring.targets import DnsName, grpc_address


async def resolve(name: DnsName, timeout_s: float) -> tuple[str, ...]:
    """The sorted, distinct gRPC addresses `name` has now; DiscoveryError when it has none or the lookup
    fails within `timeout_s`."""
    hosts = await (_system(name, timeout_s) if name.server is None else _dns_server(name, timeout_s))
    if not hosts:
        raise DiscoveryError(f"{name.host} resolved to no address")
    return tuple(sorted({grpc_address(host, name.port) for host in hosts}))


async def _system(name: DnsName, timeout_s: float) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(name.host, name.port, type=socket.SOCK_STREAM)
    except TimeoutError as exc:
        raise DiscoveryError(f"resolving {name.host} took over {timeout_s:.1f} s") from exc
    except OSError as exc:  # socket.gaierror: unknown name, resolver unreachable
        raise DiscoveryError(f"resolving {name.host} failed: {exc}") from exc
    return [str(info[4][0]) for info in infos]


async def _dns_server(name: DnsName, timeout_s: float) -> list[str]:
    assert name.server is not None
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [name.server[0]]
    resolver.port = name.server[1]
    answers = await asyncio.gather(
        *(_records(resolver, name.host, kind, timeout_s) for kind in (dns.rdatatype.A, dns.rdatatype.AAAA)),
        return_exceptions=True,
    )
    hosts = [host for answer in answers if isinstance(answer, list) for host in answer]
    if hosts:
        return hosts
    failure = next((a for a in answers if isinstance(a, BaseException)), None)
    if isinstance(failure, DiscoveryError):
        raise failure
    if failure is not None:  # anything else is a bug; let it be seen
        raise failure
    return []


async def _records(
    resolver: dns.asyncresolver.Resolver, host: str, kind: dns.rdatatype.RdataType, timeout_s: float
) -> list[str]:
    server = f"{resolver.nameservers[0]}:{resolver.port}"
    try:
        answer = await resolver.resolve(host, kind, lifetime=timeout_s, search=False)
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return []  # no record of this type: the other type may have some
    except dns.exception.DNSException as exc:  # timeout, no nameserver answered, malformed reply
        raise DiscoveryError(f"DNS server {server} could not resolve {host}: {exc}") from exc
    return [rdata.to_text() for rdata in answer]
