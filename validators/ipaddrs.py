"""Which IP addresses an HTTP capability may reach without naming them.

Server-side request forgery works by steering a request at an address the
agent could not reach itself: loopback, the private network, link-local, or a
cloud metadata service. Every spelling of such an address must be caught, so
this module looks through the IPv6 forms that carry an IPv4 address (mapped,
compatible, NAT64, 6to4) and classifies the IPv4 inside. The URL parser has
already folded the IPv4 spellings (``2130706433``, ``0177.0.0.1``,
``0x7f.1``, ``127.1``) into dotted quads.

The broker uses :func:`forbidden_reason` again on the addresses DNS returns,
which is what closes DNS names that resolve to a private address.
"""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = [
    "METADATA_HOSTNAMES",
    "IPAddress",
    "embedded_ipv4",
    "forbidden_hostname_reason",
    "forbidden_reason",
    "parse_ip",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Cloud instance metadata and wire-server addresses. Some are global
#: addresses, so the "not global" test alone would let them through.
_METADATA: Final = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS DNS over IPv6
        "168.63.129.16",  # Azure wire server (a global address)
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
    )
)

#: Names of metadata services that resolve only inside a cloud.
METADATA_HOSTNAMES: Final = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
    }
)

_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT, RFC 2765
_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")  # deprecated, RFC 4291
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL: Final = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215
_SIXTOFOUR: Final = ipaddress.IPv6Network("2002::/16")  # RFC 3056
_TEREDO: Final = ipaddress.IPv6Network("2001::/32")  # RFC 4380
_SHARED: Final = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT


def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` spells (``[v6]`` brackets allowed), else ``None``.

    An IPv4-mapped IPv6 address is returned as its IPv4 address: it reaches
    the same host, so it must compare equal to it.
    """
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address in _MAPPED:
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
    return address


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 translation or tunnelling form carries, if any."""
    if address in _MAPPED or address in _TRANSLATED or address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIXTOFOUR:
        return address.sixtofour
    return None


def forbidden_reason(address: IPAddress) -> str | None:
    """A reason code if ``address`` must be named exactly to be reached, else ``None``.

    ``metadata_address`` for cloud metadata services; ``private_address`` for
    everything that is not a global unicast address (loopback, RFC 1918,
    link-local, site-local, unique-local, carrier-grade NAT, multicast, reserved, and
    translation prefixes we cannot see through).
    """
    if address in _METADATA:
        return "metadata_address"
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            reason = forbidden_reason(inner)
            return reason if reason is not None else _v6_prefix_reason(address)
        # Site-local (fec0::/10) is deprecated (RFC 3879) but still routed
        # inside sites, and the ipaddress module calls it global.
        if address in _NAT64_LOCAL or address in _TEREDO or address.is_site_local:
            return "private_address"
    elif address in _SHARED:
        return "private_address"
    if (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    ):
        return "private_address"
    return None


def _v6_prefix_reason(address: ipaddress.IPv6Address) -> str | None:
    """A translated public IPv4 is reachable through NAT64 or 6to4 only.

    Mapped, compatible and SIIT forms are never sent on the wire as such, so
    they are refused even around a public address; NAT64 and 6to4 are real
    routes to the public internet.
    """
    if address in _NAT64 or address in _SIXTOFOUR:
        return None
    return "private_address"


def forbidden_hostname_reason(host: str) -> str | None:
    """A reason code for host names that always mean a local or metadata service.

    ``localhost`` and ``*.localhost`` resolve to loopback by RFC 6761; the
    metadata names resolve to the metadata service inside a cloud.
    """
    if host == "localhost" or host.endswith(".localhost"):
        return "private_address"
    if host in METADATA_HOSTNAMES:
        return "metadata_address"
    return None
