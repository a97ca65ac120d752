"""The SSRF policy for upstream URLs: which addresses the gateway may connect to.

Link-local (169.254/16, fe80::/10) and cloud-metadata addresses are always
refused; private and loopback ranges only when a setting allows them. A
hostname is resolved and *every* address it resolves to must pass, so a name
that resolves to one public and one internal address is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from tenantry.errors import BadRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("fd00:ec2::254"),
}
_METADATA_NAMES = {"metadata.google.internal", "metadata", "instance-data"}


def _refusal(url: str, why: str) -> BadRequest:
    return BadRequest(f"upstream URL {url[:200]!r} is not allowed: {why}", code="upstream_url_forbidden")


def check_address(address: IPAddress, *, allow_private: bool, allow_loopback: bool) -> str | None:
    """Why `address` is refused, or None when it may be used."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA:
        return f"{address} is a cloud metadata address"
    if address.is_link_local:
        return f"{address} is link-local"
    if address.is_loopback:
        return None if allow_loopback else f"{address} is loopback"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return f"{address} is not a unicast address"
    if address.is_private or address in ipaddress.ip_network("100.64.0.0/10"):
        return None if allow_private else f"{address} is a private address"
    return None


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL, or a 400 `invalid_upstream_url`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"not a valid URL: {exc}", code="invalid_upstream_url") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("the upstream URL must be http:// or https:// with a host", code="invalid_upstream_url")
    if parts.username or parts.password:
        raise BadRequest("put credentials in headers, not in the URL", code="invalid_upstream_url")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_url(url: str, *, allow_private: bool, allow_loopback: bool) -> list[str]:
    """Refuse `url` (400) unless every address its host resolves to is allowed; return those addresses.

    Connect to the returned addresses rather than resolving the name again, or a DNS answer
    that changes between the check and the connection could point the gateway elsewhere."""
    host, port = parse_url(url)
    if host.lower().rstrip(".") in _METADATA_NAMES:
        raise _refusal(url, f"{host} is a cloud metadata name")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise BadRequest(f"upstream host {host!r} does not resolve", code="invalid_upstream_url") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        why = check_address(address, allow_private=allow_private, allow_loopback=allow_loopback)
        if why is not None:
            raise _refusal(url, why)
    return list(dict.fromkeys(str(address) for address in addresses))
