"""Where webhooks may go: no loopback, link-local, private or other internal addresses.

An endpoint URL is refused at registration when its host is, or resolves to, an address
that is not publicly routable, unless `ARBITER_WEBHOOK_ALLOW_NETWORKS` (CIDRs) lists it.
Registration is only a first check: a name may resolve differently later (DNS rebinding),
so every delivery resolves the host once, checks every address it got, and connects to
the checked address itself (`PinnedTransport`), never to the name again.

Every spelling is caught because the check runs on what the C resolver connects to:
`socket.getaddrinfo` goes through `inet_aton`, which accepts the legacy IPv4 forms
(`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`); literals are also parsed here the
same way, so they are refused even when a name could not be resolved.

IPv6 addresses that embed an IPv4 address are judged by both: IPv4-mapped
(`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, all of `::/8` is reserved anyway),
6to4 (`2002:aabb:ccdd::/48`: refused when the embedded address is), NAT64
(`64:ff9b::/96`, `64:ff9b:1::/48`); Teredo (`2001::/32`) is not globally routable
(IANA special-purpose registry) and so always refused.

A name that does not resolve at registration is accepted (the receiver's DNS may not be
up yet); its delivery attempts are checked all the same.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "ARBITER_WEBHOOK_ALLOW_NETWORKS"
METADATA_ADDRESS = ipaddress.IPv4Address("169.254.169.254")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


class AddressRefused(Exception):
    """A webhook host is, or resolves to, an address Arbiter must not send to."""


def resolve(host: str, port: int) -> list[str]:
    """The host's addresses as the C resolver gives them (the seam tests replace)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def allowed_networks() -> list[IPNetwork]:
    networks = []
    for text in getattr(settings, SETTING, []):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{SETTING}: {text!r} is not a CIDR network") from None
    return networks


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 or any(ip in net for net in _NAT64):
        return low32
    return None


def _kind(ip: IPAddress) -> str | None:
    """What kind of non-public address `ip` is, or None for a public one."""
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip == METADATA_ADDRESS:
        return "the cloud metadata address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "a carrier-grade NAT address (100.64.0.0/10)"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


def refusal(ip: IPAddress, networks: list[IPNetwork] | None = None) -> str | None:
    """Why Arbiter must not connect to `ip`, or None when it may."""
    networks = allowed_networks() if networks is None else networks
    ip = ipaddress.ip_address(str(ip).split("%")[0])  # a zone id never changes the verdict
    inner = embedded_ipv4(ip)
    # The carried IPv4 address first: it says what the connection would reach.
    candidates = [ip] if inner is None else [inner, ip]
    if any(c in net for c in candidates for net in networks if c.version == net.version):
        return None
    for candidate in candidates:
        kind = _kind(candidate)
        if kind:
            carried = f" (it carries {candidate})" if candidate is not ip else ""
            return f"{ip} is {kind}{carried}; {SETTING} does not allow it"
    return None


def literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address if it is one in any spelling the resolver accepts."""
    host = host.strip("[]").lower()
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    name = host.removesuffix(".")
    try:
        # inet_aton: what getaddrinfo (and so the connection) makes of 127.1, 0x7f.1,
        # 0177.0.0.1 and 2130706433 (glibc resolv/inet_addr.c).
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except (OSError, ValueError):
        return None


def checked_addresses(host: str, port: int) -> list[IPAddress]:
    """Resolve `host` once and return its addresses; AddressRefused if any is refused.

    Every address must pass, not only the first: the connection may fall back to any.
    """
    networks = allowed_networks()
    literal = literal_address(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        name = host.lower().removesuffix(".")
        if name == "localhost" or name.endswith(".localhost"):
            # RFC 6761 6.3: always loopback, whatever a resolver says.
            loopback = ipaddress.IPv4Address("127.0.0.1")
            problem = refusal(loopback, networks)
            if problem:
                raise AddressRefused(f"{host} is a loopback name: {problem}")
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]
    for address in addresses:
        problem = refusal(address, networks)
        if problem:
            shown = "" if literal is not None and host == str(address) else f"{host} → "
            raise AddressRefused(f"{shown}{problem}")
    return addresses


def url_refusal(url: str) -> str | None:
    """Why a webhook URL must be refused at registration, or None.

    Both parsers' hosts are checked (the stdlib's and httpx's, which sends), so a URL
    they read differently cannot slip through either.
    """
    stdlib = urlsplit(url)
    hosts = [stdlib.hostname or ""]
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        invalid: str | None = f"not a valid URL ({exc})"
    else:
        invalid = None
        hosts.append(parsed.host)
    try:
        port = stdlib.port or (443 if stdlib.scheme == "https" else 80)
    except ValueError:
        return "not a valid URL (bad port)"
    for host in dict.fromkeys(h for h in hosts if h):
        if "%" in host and literal_address(host) is None:
            return f"percent-encoding is not allowed in the host ({host})"
        try:
            checked_addresses(host, port)
        except AddressRefused as exc:
            return str(exc)
        except (OSError, UnicodeError):
            continue  # does not resolve (yet): every delivery is checked again
    return invalid


# Delivery: connect to the checked address, within one total deadline.
#
# httpx has no hook between "resolve" and "connect", but httpcore (its engine) takes a
# network backend: `PinnedBackend.connect_tcp` receives the URL's host, resolves and
# checks it, and opens the socket to the checked IP itself. The URL keeps its name, so
# the Host header, TLS SNI and certificate verification all use the name as usual.
# The same backend wraps every stream so each read and write waits at most until the
# attempt's deadline: a receiver that drips bytes cannot stretch an attempt (per-read
# timeouts alone would let it). DNS resolution itself is not interruptible.


def _bounded(timeout: float | None, deadline: float, exc: type[Exception]) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise exc("delivery deadline passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        bound = _bounded(timeout, self._deadline, httpcore.ReadTimeout)
        return self._stream.read(max_bytes, bound)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        bound = _bounded(timeout, self._deadline, httpcore.WriteTimeout)
        self._stream.write(buffer, bound)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bound = _bounded(timeout, self._deadline, httpcore.ConnectTimeout)
        tls = self._stream.start_tls(ssl_context, server_hostname, bound)
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class PinnedBackend(httpcore.NetworkBackend):
    """Connects only to checked addresses of the URL's host, within `deadline`."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = checked_addresses(host, port)
        except (OSError, UnicodeError) as exc:  # does not resolve: as httpx reports it
            raise httpcore.ConnectError(str(exc)) from exc
        last: Exception | None = None
        for address in addresses:
            bound = _bounded(timeout, self._deadline, httpcore.ConnectTimeout)
            try:
                stream = self._inner.connect_tcp(
                    str(address), port, bound, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise last or httpcore.ConnectError(f"{host} has no address")

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks do not use unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        if hasattr(self._stream, "close"):
            self._stream.close()


class PinnedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore pool that uses `PinnedBackend` (see above)."""

    def __init__(self, deadline: float) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=PinnedBackend(deadline)
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        response = self._pool.handle_request(
            httpcore.Request(
                method=request.method,
                url=httpcore.URL(
                    scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
                ),
                headers=request.headers.raw,
                content=request.stream,  # type: ignore[arg-type]
                extensions=request.extensions,
            )
        )
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()
