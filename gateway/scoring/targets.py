"""Where the Triton fleet is: `BIDGW_TRITON_URL` parsed as a gRPC target (gRPC's naming document).

Accepted forms, as gRPC names them:
  host:port                    a name resolved by the system resolver (gRPC's default scheme is dns), or an
                               IP literal ([v6]:port for IPv6): one address or many (a headless Service)
  dns:///host:port             the same, said explicitly
  dns://server[:53]/host:port  the name resolved by the DNS server given (A and AAAA records)
  ipv4:a:port,b:port           a fixed list of IPv4 addresses
  ipv6:[a]:port,[b]:port       a fixed list of IPv6 addresses
  unix:/path                   one Unix socket, passed to gRPC as is
A missing port is 443, as in gRPC. Names are re-resolved by `gateway.scoring.fleet`; fixed lists never.
Anything else is a ValueError naming what is wrong, raised when the settings are read (the gateway
refuses to start rather than discovering a typo at the first bid).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

GRPC_DEFAULT_PORT: Final = 443
DNS_DEFAULT_PORT: Final = 53


@dataclass(frozen=True, slots=True)
class DnsName:
    """A name to resolve: by the system resolver (`server` None) or by the DNS server at `server`."""

    host: str
    port: int
    server: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class TritonTarget:
    """Either a fixed list of gRPC addresses or a name whose addresses change."""

    text: str
    addresses: tuple[str, ...] = ()  # fixed: gRPC targets of one server each ("10.0.0.1:8001", "unix:/x")
    name: DnsName | None = None

    @property
    def resolves(self) -> bool:
        return self.name is not None


def grpc_address(host: str, port: int) -> str:
    """The gRPC target of one server: IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_target(text: str) -> TritonTarget:
    target = text.strip()
    if not target:
        raise ValueError("triton_url is empty: give host:port, dns:///name:port or ipv4:a:port,b:port")
    if target.startswith("unix:"):
        if len(target) == len("unix:"):
            raise ValueError(f"triton_url {text!r}: unix: needs a socket path")
        return TritonTarget(text, addresses=(target,))
    if target.startswith(("ipv4:", "ipv6:")):
        scheme, _, rest = target.partition(":")
        addresses = tuple(_fixed_address(text, scheme, part) for part in rest.split(","))
        return TritonTarget(text, addresses=addresses)
    if target.startswith("dns:"):
        return _dns_target(text, target)
    if "://" in target or target.startswith("/"):
        raise ValueError(
            f"triton_url {text!r}: unknown scheme; use host:port, dns:///name:port, dns://server/name:port, "
            "ipv4:a:port,b:port, ipv6:[a]:port or unix:/path"
        )
    host, port = _host_port(text, target, GRPC_DEFAULT_PORT)
    if _is_ip(host):
        return TritonTarget(text, addresses=(grpc_address(host, port),))
    return TritonTarget(text, name=DnsName(host, port))


def _dns_target(text: str, target: str) -> TritonTarget:
    # dns:[//authority/]host[:port] -- the authority, when present, is the DNS server to ask.
    rest = target[len("dns:") :]
    server: tuple[str, int] | None = None
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        if not slash:
            raise ValueError(f"triton_url {text!r}: dns://server/name:port needs the '/' before the name")
        if authority:
            host, port = _host_port(text, authority, DNS_DEFAULT_PORT)
            if not _is_ip(host):
                raise ValueError(f"triton_url {text!r}: the DNS server must be an IP address, not {host!r}")
            server = (host, port)
    name, port = _host_port(text, rest, GRPC_DEFAULT_PORT)
    if _is_ip(name):
        return TritonTarget(text, addresses=(grpc_address(name, port),))
    return TritonTarget(text, name=DnsName(name, port, server))


def _fixed_address(text: str, scheme: str, part: str) -> str:
    host, port = _host_port(text, part.strip(), GRPC_DEFAULT_PORT)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"triton_url {text!r}: {host!r} is not an IP address ({scheme}: lists addresses)"
        ) from None
    if ip.version != int(scheme[-1]):
        raise ValueError(f"triton_url {text!r}: {host!r} is not an {scheme} address")
    return grpc_address(host, port)


def _host_port(text: str, value: str, default_port: int) -> tuple[str, int]:
    if not value:
        raise ValueError(f"triton_url {text!r}: an address is empty")
    if value.startswith("["):
        host, bracket, tail = value[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"triton_url {text!r}: {value!r} is not [ipv6]:port")
        port_text = tail[1:] if tail else ""
    elif value.count(":") > 1:
        raise ValueError(f"triton_url {text!r}: write the IPv6 address {value!r} as [address]:port")
    else:
        host, _, port_text = value.partition(":")
    if not host:
        raise ValueError(f"triton_url {text!r}: {value!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"triton_url {text!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
