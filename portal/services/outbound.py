"""The outbound connection policy: which destinations accounts may connect to.

Administrators list allowed destinations, one per line:

    smtp.example.com            a host name, any port
    *.corp.example:25,587       any name under corp.example, on ports 25 and 587
    10.20.0.0/16:993            a network, on port 993
    [fd00::/8]:25               an IPv6 network, with ports after brackets

Decisions, for each address a host name resolves to:
- link-local and cloud metadata addresses: always refused (transports.destinations);
- personal accounts: loopback, private and other non-public addresses are
  refused unless a rule allows them; public addresses are allowed;
- global accounts: allowed, unless "only listed destinations" is on, when a
  rule must allow them.
``PORTAL_OUTBOUND_ALLOW`` adds rules from the environment (comma-separated).
"""

import ipaddress
import json
import logging
from dataclasses import dataclass

from flask import current_app

from ..transports import destinations
from . import audit
from .settings import get_setting, set_setting

log = logging.getLogger(__name__)

SETTING = "outbound_policy"
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Rule:
    text: str
    host: str | None = None  # lower-case name, or "*.domain" for its subdomains
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    ports: frozenset[int] | None = None  # None means any port

    def matches(self, host: str, ip: IPAddress, port: int) -> bool:
        if self.ports is not None and port not in self.ports:
            return False
        if self.network is not None:
            return ip.version == self.network.version and ip in self.network
        name = host.lower().rstrip(".")
        if self.host.startswith("*."):
            return name.endswith(self.host[1:])
        return name == self.host


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    restrict_global: bool = False
    text: str = ""  # the administrators' rules as they typed them

    def allowing_rule(self, host: str, ip: IPAddress, port: int) -> Rule | None:
        return next((rule for rule in self.rules if rule.matches(host, ip, port)), None)


def parse_rule(line: str) -> Rule:
    """Parse one destination; raises ValueError with a message for the line."""
    text = line.strip()
    target, ports = text, None
    if text.startswith("["):
        target, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(
                f"{text!r}: put the port after the bracket, as [fd00::/8]:25."
            )
        ports = rest[1:] or None
    elif text.count(":") == 1:
        target, ports = text.split(":")

    port_set = None
    if ports is not None:
        try:
            port_set = frozenset(int(part) for part in ports.split(",") if part.strip())
        except ValueError:
            raise ValueError(
                f"{text!r}: ports are numbers separated by commas, as :25,587."
            ) from None
        if not port_set or any(not 1 <= port <= 65535 for port in port_set):
            raise ValueError(f"{text!r}: ports are 1 to 65535.")
    try:
        return Rule(
            text=text,
            network=ipaddress.ip_network(target, strict=False),
            ports=port_set,
        )
    except ValueError:
        pass
    name = target.lower().rstrip(".")
    plain = name[2:] if name.startswith("*.") else name
    labels = plain.split(".")
    if (
        not plain
        or any(not label or len(label) > 63 for label in labels)
        or not all(
            character.isalnum() or character in "-_"
            for label in labels
            for character in label
        )
    ):
        raise ValueError(
            f"{text!r} is not a host name, a *.domain, an address or a network."
        )
    try:
        name = ("*." if name.startswith("*.") else "") + plain.encode("idna").decode(
            "ascii"
        )
    except UnicodeError:
        raise ValueError(f"{text!r} is not a valid host name.") from None
    return Rule(text=text, host=name, ports=port_set)


def parse_rules(text: str) -> tuple[list[Rule], list[str]]:
    rules, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        try:
            rules.append(parse_rule(line))
        except ValueError as error:
            errors.append(f"Line {number}: {error}")
    return rules, errors


def load_policy() -> Policy:
    stored = json.loads(get_setting(SETTING))
    text = stored.get("rules", "")
    rules, _ = parse_rules(text)
    extra = current_app.config.get("OUTBOUND_ALLOW", "")
    extra_rules, errors = parse_rules("\n".join(part for part in extra.split(",")))
    if errors:
        log.warning("Ignoring invalid PORTAL_OUTBOUND_ALLOW entries: %s", errors)
    return Policy(tuple(rules + extra_rules), bool(stored.get("restrict_global")), text)


def save_policy(text: str, restrict_global: bool) -> list[str]:
    """Store the policy, or return the errors by line and store nothing."""
    _, errors = parse_rules(text)
    if errors:
        return errors
    old = json.loads(get_setting(SETTING))
    new = {"rules": text.strip(), "restrict_global": restrict_global}
    if old != new:
        set_setting(SETTING, json.dumps(new))
        audit.record(
            "outbound.policy",
            object_type="setting",
            object_id=SETTING,
            changes=audit.diff(old, new),
        )
    return []


def is_internal(ip: IPAddress) -> bool:
    """Loopback, private, shared or otherwise non-public addresses."""
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_reserved
        or ip.is_link_local
        or (ip.version == 4 and ip in SHARED_ADDRESS_SPACE)
        or not ip.is_global
    )


def guard_for(personal: bool, policy: Policy) -> destinations.Guard:
    """Return the check applied to every connection an account of this kind makes."""

    def guard(host: str, port: int, ip: IPAddress) -> None:
        rule = policy.allowing_rule(host, ip, port)
        if rule is not None:
            return
        if personal and is_internal(ip):
            raise destinations.refusal(
                host,
                str(ip),
                port,
                "personal accounts may not connect to loopback or private network "
                "addresses unless the outbound connection policy lists them",
                "Use the provider's public server name, or ask an administrator to "
                "allow this destination under Outbound connections.",
            )
        if not personal and policy.restrict_global:
            raise destinations.refusal(
                host,
                str(ip),
                port,
                "global accounts may connect only to the destinations the outbound "
                "connection policy lists, and none matches",
                "Ask an administrator to add the server under Outbound connections.",
            )

    return guard
