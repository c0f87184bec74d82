"""A real DNS server on loopback (dnslib, UDP) whose A records a test changes while gateways resolve them.

What a Kubernetes headless Service looks like to a client: one name, one A record per ready pod, changing
as pods come and go. TTL 0, so nothing between the gateway and this server may keep an old answer.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Records(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: dict[str, list[str]] = {}
        self.queries = 0

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            self.queries += 1
            addresses = self.names.get(name)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            for address in addresses:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=0))
        return reply  # AAAA for a known name: no answer, no error


class TestDnsServer:
    """`with TestDnsServer() as dns: dns.set("triton.test", ["127.0.0.11", ...])`; `dns.address` is
    the "ip:port" to put in a `dns://ip:port/name:port` target."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.port = free_udp_port()
        self._records = _Records()
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", logf=lambda _: None)
        self._server = DNSServer(self._records, address="127.0.0.1", port=self.port, logger=quiet)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def queries(self) -> int:
        with self._records.lock:
            return self._records.queries

    def set(self, name: str, addresses: list[str]) -> None:
        with self._records.lock:
            self._records.names[name.lower()] = list(addresses)

    def __enter__(self) -> TestDnsServer:
        self._server.start_thread()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.stop()
