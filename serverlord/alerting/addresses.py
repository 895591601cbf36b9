"""Address policy: the network addresses that webhook and apprise targets may reach.

A channel's URL is chosen by a user, so without a check a webhook could make the server
send requests to its own database port, a cloud metadata service (169.254.169.254) or
other hosts of the private network. Targets must resolve to public unicast addresses
only, unless the operator allows more networks (WEBHOOK_ALLOWED_NETWORKS).

The name is resolved once and the caller connects to the returned addresses, so a DNS
server cannot answer "public" to the check and "private" to the connection.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from serverlord.alerting.settings import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# IPv6 prefixes that carry an IPv4 address in their last 32 bits (RFC 6052 NAT64). A
# gateway translates them, so the embedded IPv4 address is the real destination.
_NAT64_PREFIXES = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)


class TargetRejected(Exception):
    """The target host resolves to an address that channels may not reach."""


@dataclass(frozen=True)
class AddressPolicy:
    allowed_networks: tuple[IPNetwork, ...] = ()

    def is_allowed(self, address: IPAddress) -> bool:
        """Return whether a connection to `address` is permitted."""
        return _is_allowed(self.allowed_networks, address)

    def check_literal(self, host: str) -> None:
        """Raise TargetRejected when `host` is an IP literal that may not be reached.

        Host names pass: whether they are allowed depends on DNS at send time.
        """
        address = parse_ip(host)
        if address is not None and not self.is_allowed(address):
            raise TargetRejected(_rejection(host, [address]))

    async def resolve(self, host: str, port: int, resolver: Resolver | None = None) -> list[str]:
        """Resolve `host` and return its addresses, all of which are allowed.

        Raises TargetRejected if any address is not allowed, because a name that mixes
        public and private addresses would let the private one be picked on a retry.
        Raises OSError when the name does not resolve.
        """
        literal = parse_ip(host)
        if literal is not None:
            addresses = [str(literal)]
        else:
            addresses = await (resolver or resolve_host)(host, port)
        parsed = [_parse_address(address) for address in addresses]
        rejected = [address for address in parsed if not self.is_allowed(address)]
        if rejected:
            raise TargetRejected(_rejection(host, rejected))
        if not parsed:
            raise OSError(f"{host} resolved to no address")
        return [str(address) for address in parsed]


async def resolve_host(host: str, port: int) -> list[str]:
    """Resolve `host` with the system resolver and return its addresses without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return _unique(str(info[4][0]).split("%", 1)[0] for info in infos)


# Each webhook try checks its target again, so parsing and checking an address are cached:
# both depend only on their arguments, and the same few addresses come back every time.
@functools.lru_cache(maxsize=4096)
def _is_allowed(allowed_networks: tuple[IPNetwork, ...], address: IPAddress) -> bool:
    address = _embedded_ipv4(address) or address
    if any(address in network for network in allowed_networks):
        return True
    return address.is_global and not address.is_multicast


@functools.lru_cache(maxsize=4096)
def _parse_address(address: str) -> IPAddress:
    return ipaddress.ip_address(address)


@functools.lru_cache(maxsize=4096)
def parse_ip(host: str) -> IPAddress | None:
    """Parse `host` as an IP literal, with or without IPv6 brackets, or return None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in prefix for prefix in _NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _rejection(host: str, addresses: list[IPAddress]) -> str:
    listed = ", ".join(str(address) for address in addresses[:3])
    where = "is" if parse_ip(host) is not None else f"resolves to {listed},"
    return (
        f"{host} {where} a private, loopback, link-local, multicast or "
        "reserved address; use a public address, or ask the operator to add the "
        "network to WEBHOOK_ALLOWED_NETWORKS"
    )


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
