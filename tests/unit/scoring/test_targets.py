"""BIDGW_TRITON_URL as a gRPC target: every form gRPC's naming document gives, and clear errors."""

from __future__ import annotations

import pytest

from gateway.scoring.targets import DnsName, TritonTarget, parse_target


@pytest.mark.parametrize(
    ("text", "addresses"),
    [
        ("127.0.0.1:8001", ("127.0.0.1:8001",)),
        ("[::1]:8001", ("[::1]:8001",)),
        ("10.0.0.7", ("10.0.0.7:443",)),  # gRPC's default port
        ("ipv4:10.0.0.1:8001,10.0.0.2:9001", ("10.0.0.1:8001", "10.0.0.2:9001")),
        ("ipv6:[::1]:8001,[fe80::1]:8002", ("[::1]:8001", "[fe80::1]:8002")),
        ("dns:///10.1.2.3:8001", ("10.1.2.3:8001",)),
        ("unix:/run/triton.sock", ("unix:/run/triton.sock",)),
    ],
)
def test_fixed_addresses(text: str, addresses: tuple[str, ...]) -> None:
    target = parse_target(text)
    assert target == TritonTarget(text, addresses=addresses)
    assert not target.resolves


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("triton:8001", DnsName("triton", 8001)),
        (
            "dns:///triton-headless.ns.svc.cluster.local:8001",
            DnsName("triton-headless.ns.svc.cluster.local", 8001),
        ),
        ("dns://127.0.0.1:5353/triton.test:8001", DnsName("triton.test", 8001, ("127.0.0.1", 5353))),
        ("dns://10.0.0.10/triton:8001", DnsName("triton", 8001, ("10.0.0.10", 53))),
        ("dns:triton", DnsName("triton", 443)),
    ],
)
def test_names_to_resolve(text: str, name: DnsName) -> None:
    target = parse_target(text)
    assert target.name == name
    assert target.resolves
    assert target.addresses == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("http://triton:8000", "unknown scheme"),
        ("triton:http", "port 'http' is not a number"),
        ("triton:0", "port '0' is not a number from 1 to 65535"),
        ("triton:65536", "port '65536'"),
        ("ipv4:triton:8001", "'triton' is not an IP address"),
        ("ipv4:[::1]:8001", "is not an ipv4 address"),
        ("ipv6:10.0.0.1:8001", "is not an ipv6 address"),
        ("ipv4:10.0.0.1:8001,", "an address is empty"),
        ("dns://resolver.local/triton:8001", "the DNS server must be an IP address"),
        ("dns://10.0.0.10", "needs the '/' before the name"),
        ("::1:8001", "write the IPv6 address"),
        ("[::1:8001", "is not [ipv6]:port"),
        (":8001", "has no host"),
        ("unix:", "needs a socket path"),
    ],
)
def test_bad_targets_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="triton_url") as caught:
        parse_target(text)
    assert problem in str(caught.value)
