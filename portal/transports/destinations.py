"""Which addresses the transports may connect to.

Every transport that connects to a host a person typed resolves the name,
passes each address to ``check`` and connects to that same address, so a name
cannot resolve to one address for the check and another for the connection.
Link-local and cloud metadata addresses are always rejected. Anything more is
decided by the guard that the caller installs with ``guarded``, which is the
portal's outbound connection policy.
"""

import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .base import Step, TransportError

# Networks no account may reach: link-local ranges, which hold the metadata
# services of the big clouds (169.254.169.254, fd00:ec2::254 on AWS), and other
# addresses that cloud platforms use for instance metadata.
ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(network)
    for network in (
        "169.254.0.0/16",  # IPv4 link-local, including 169.254.169.254
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS instance metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "168.63.129.16/32",  # Azure platform (wire server)
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host
        "::/128",
        "224.0.0.0/4",  # multicast
        "ff00::/8",
        "255.255.255.255/32",
    )
)

Guard = Callable[[str, int, ipaddress.IPv4Address | ipaddress.IPv6Address], None]

_guard: ContextVar[Guard | None] = ContextVar("outbound_guard", default=None)


def refusal(
    host: str, address: str, port: int, rule: str, advice: str
) -> TransportError:
    shown = host if host == address else f"{host} ({address})"
    return TransportError(
        Step.CONNECT,
        f"Connecting to {shown} port {port} is not allowed: {rule}.",
        advice,
    )


def check(host: str, port: int, address: str) -> None:
    """Raise TransportError unless ``address`` (resolved from ``host``) may be reached."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for network in ALWAYS_REFUSED:
        if ip.version == network.version and ip in network:
            raise refusal(
                host,
                str(ip),
                port,
                f"{network} is a link-local, metadata or reserved range, which is never allowed",
                "Use the mail server's own address. Link-local and cloud metadata "
                "addresses are refused for every account.",
            )
    guard = _guard.get()
    if guard is not None:
        guard(host, port, ip)


@contextmanager
def guarded(guard: Guard | None) -> Iterator[None]:
    """Apply ``guard`` to every connection made in this context (thread or task)."""
    token = _guard.set(guard)
    try:
        yield
    finally:
        _guard.reset(token)


def set_guard(guard: Guard | None) -> None:
    """Apply ``guard`` for the rest of the current context, such as an asyncio task."""
    _guard.set(guard)
