"""Find a mailbox's EWS endpoint with SOAP Autodiscover, on the portal's own terms.

The candidates come from configuration, in order; each is one of:

- an https:// URL template such as ``https://autodiscover.{domain}/autodiscover/autodiscover.svc``:
  a GetUserSettings request, signed in, through exchangelib;
- an http:// URL template: an unauthenticated GET that only looks for a
  redirect to an https:// Autodiscover host;
- ``srv``: the DNS SRV record ``_autodiscover._tcp.{domain}``.

These are the steps of Microsoft's Autodiscover for on-premises Exchange, minus
the Active Directory lookup. exchangelib's own discovery follows every redirect
by itself, so it is not used. Here:

- credentials are sent only over HTTPS, and never to a plain-HTTP address;
- a redirect to another host (an HTTP redirect, an SRV record, a RedirectUrl,
  or a RedirectAddress in another domain) stops with RedirectNeedsConfirmation
  until the caller passes that host in ``allowed_hosts``;
- with ``keep_on_premises``, a response that leads to Exchange Online raises
  MailboxInMicrosoft365.

Every address tried is recorded with what it answered, for the page.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import dns.exception
import dns.resolver
import requests
from exchangelib import errors as ews_errors
from exchangelib.properties import UserResponse

from . import ews
from .base import Step, TransportError

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES = (
    "https://{domain}/autodiscover/autodiscover.svc",
    "https://autodiscover.{domain}/autodiscover/autodiscover.svc",
    "http://autodiscover.{domain}/autodiscover/autodiscover.xml",
    "srv",
)
SOAP_PATH = "/autodiscover/autodiscover.svc"
# Redirects followed before giving up, as in Microsoft's Autodiscover guidance.
MAX_REDIRECTS = 10

# Domains of Exchange Online and its national clouds, and of the addresses that
# a hybrid deployment redirects migrated mailboxes to.
MICROSOFT_365_DOMAINS = (
    "outlook.com",
    "office365.com",
    "office.com",
    "onmicrosoft.com",
    "office365.us",
    "onmicrosoft.us",
    "outlook.cn",
    "onmschina.cn",
)

# GetUserSettings settings the portal reads.
REQUESTED_SETTINGS = [
    "user_display_name",
    "auto_discover_smtp_address",
    "internal_ews_url",
    "external_ews_url",
    "cas_version",
    "ews_supported_schemas",
]

# Verification against the certificate authorities, without a pinned certificate.
NO_PIN = ews.TlsPolicy()

SrvLookup = Callable[[str, float], list[tuple[int, int, int, str]]]


@dataclass
class Attempt:
    """One address that Autodiscover tried, and its response in words."""

    url: str
    answer: str


@dataclass
class Discovery:
    """The settings Autodiscover found; ``to_dict`` returns what the account stores."""

    address: str  # the mailbox address of the returned settings
    ews_url: str
    authentication: ews.Authentication
    server_version: str = ""  # a build such as "15.2.1544.4"
    display_name: str = ""
    offered: list[str] = field(default_factory=list)  # schemes EWS offered
    note: str = ""  # a change the portal made, such as another authentication
    attempts: list[Attempt] = field(default_factory=list)
    for_address: str = ""  # the address Autodiscover started from

    def to_dict(self) -> dict:
        return {
            "for_address": self.for_address,
            "address": self.address,
            "ews_url": self.ews_url,
            "authentication": str(self.authentication),
            "server_version": self.server_version,
            "display_name": self.display_name,
            "offered": list(self.offered),
            "note": self.note,
            "attempts": [[attempt.url, attempt.answer] for attempt in self.attempts],
        }

    @classmethod
    def from_dict(cls, values: dict) -> "Discovery":
        return cls(
            for_address=values.get("for_address", ""),
            address=values.get("address", ""),
            ews_url=values.get("ews_url", ""),
            authentication=ews.Authentication(values.get("authentication", "ntlm")),
            server_version=values.get("server_version", ""),
            display_name=values.get("display_name", ""),
            offered=list(values.get("offered", [])),
            note=values.get("note", ""),
            attempts=[
                Attempt(url, answer) for url, answer in values.get("attempts", [])
            ],
        )


class AutodiscoverFailed(Exception):
    """No candidate returned settings; ``attempts`` lists each one's response."""

    def __init__(
        self,
        summary: str,
        advice: str,
        attempts: list[Attempt],
        *,
        step: str = "autodiscover",
        certificate=None,
    ) -> None:
        super().__init__(summary)
        self.summary = summary
        self.advice = advice
        self.attempts = attempts
        self.step = step
        self.certificate = certificate


class MailboxInMicrosoft365(AutodiscoverFailed):
    """The answer leads to Exchange Online, and the account keeps to on-premises."""


class RedirectNeedsConfirmation(Exception):
    """A redirect leads to another host; the administrator must allow ``host`` first."""

    def __init__(self, source: str, target: str, host: str, attempts: list[Attempt]):
        super().__init__(f"{source} redirected to {target}")
        self.source = source
        self.target = target
        self.host = host
        self.attempts = attempts


def is_microsoft_365(host_or_address: str) -> bool:
    """Return whether a host name, or an address's domain, belongs to Exchange Online."""
    name = host_or_address.rsplit("@", 1)[-1].strip().lower().removesuffix(".")
    return any(
        name == domain or name.endswith("." + domain)
        for domain in MICROSOFT_365_DOMAINS
    )


def parse_candidates(text: str) -> list[str]:
    """Split the configured candidates on commas and white space."""
    return [item for item in text.replace(",", " ").split() if item]


@dataclass
class _Redirect:
    source: str
    target: str  # a URL or, for a RedirectAddress, an email address
    is_address: bool = False


class _Search:
    """The state of one Autodiscover run."""

    def __init__(
        self,
        *,
        username: str,
        password: str,
        authentication: ews.Authentication,
        candidates: list[str],
        keep_on_premises: bool,
        allowed_hosts: set[str],
        tls_policy: ews.TlsPolicy,
        timeout: float,
        srv_lookup: SrvLookup | None,
    ) -> None:
        self.username = username
        self.password = password
        self.authentication = authentication
        self.candidates = candidates
        self.keep_on_premises = keep_on_premises
        self.allowed_hosts = {host.lower() for host in allowed_hosts}
        self.tls_policy = tls_policy
        self.timeout = timeout
        self.srv_lookup = srv_lookup or lookup_srv
        self.start_address = ""
        self.attempts: list[Attempt] = []
        self.visited: set[str] = set()
        self.redirects = 0
        self.unauthorized = False
        self.no_mailbox = False
        self.certificate = None

    # -- the steps ----------------------------------------------------------------

    def run(self, address: str) -> Discovery:
        self.start_address = address
        for _ in range(MAX_REDIRECTS):
            domain = address.rsplit("@", 1)[-1].lower()
            found = self._try_candidates(address, domain)
            if isinstance(found, UserResponse):
                return self._finish(address, found)

            # A RedirectAddress: start again with the new address.
            target = found.target.strip()
            self._check_on_premises(target, found.source)
            new_domain = target.rsplit("@", 1)[-1].lower()
            if new_domain != domain and new_domain not in self.allowed_hosts:
                raise RedirectNeedsConfirmation(
                    found.source, target, new_domain, self.attempts
                )
            self._count_redirect()
            address = target
        raise self._failure(address)

    def _try_candidates(self, address: str, domain: str) -> UserResponse | _Redirect:
        for template in self.candidates:
            if template.lower() == "srv":
                url = self._srv_candidate(domain)
            elif template.lower().startswith("http://"):
                url = self._http_candidate(template.format(domain=domain))
            else:
                url = template.format(domain=domain)
            if url is None:
                continue
            found = self._follow(url, address)
            if found is not None:
                return found
        raise self._failure(address)

    def _follow(self, url: str, address: str) -> UserResponse | _Redirect | None:
        """POST GetUserSettings to ``url``, following allowed URL redirects."""
        while True:
            if url.lower() in self.visited:
                self.attempts.append(Attempt(url, "Already tried: a redirect loop."))
                return None
            self.visited.add(url.lower())
            answer = self._get_user_settings(url, address)
            if not isinstance(answer, _Redirect) or answer.is_address:
                return answer
            if not self._may_follow(answer):
                return None
            self._count_redirect()
            url = answer.target

    def _get_user_settings(
        self, url: str, address: str
    ) -> UserResponse | _Redirect | None:
        log.info("Autodiscover: GetUserSettings for %s at %s", address, url)
        parts = urlsplit(url)
        config = ews.configuration(
            url,
            username=self.username,
            password=self.password,
            authentication=self.authentication,
            tls_policy=self.tls_policy,
            timeout=self.timeout,
        )
        protocol = ews.PortalAutodiscoverProtocol(config)
        try:
            response = protocol.get_user_settings(
                user=address, settings=REQUESTED_SETTINGS
            )
        except ews_errors.RedirectError as error:
            self._record(url, f"HTTP redirect to {error.url}")
            return _Redirect(url, error.url)
        except ews_errors.UnauthorizedError:
            self.unauthorized = True
            self._record(url, "HTTP 401: the user name or password was rejected.")
            return None
        except (
            ews_errors.EWSError,
            requests.RequestException,
            OSError,
            ValueError,
        ) as error:
            self._record(url, self._describe_error(error, parts))
            return None
        finally:
            protocol.close()

        if isinstance(response, Exception):
            self._record(url, f"{type(response).__name__}: {response}")
            return None
        if response.redirect_address:
            self._record(url, f"RedirectAddress to {response.redirect_address}")
            return _Redirect(url, response.redirect_address, is_address=True)
        if response.redirect_url:
            self._record(url, f"RedirectUrl to {response.redirect_url}")
            return _Redirect(url, response.redirect_url)
        if response.error_code and response.error_code != "NoError":
            if response.error_code == "InvalidUser":
                self.no_mailbox = True
            self._record(url, f"{response.error_code}: {response.error_message}")
            return None
        self._record(url, "NoError: settings returned.")
        return response

    def _describe_error(self, error: BaseException, parts) -> str:
        failure = ews.network_failure(
            error,
            host=parts.hostname or "",
            port=parts.port or 443,
            timeout=self.timeout,
            trusted_fingerprint=self.tls_policy.trusted_fingerprint,
        )
        if failure is not None:
            if failure.certificate is not None:
                self.certificate = failure.certificate
            return failure.summary
        if isinstance(error, ews_errors.MalformedResponseError):
            status = ews._STATUS.search(str(error))
            if status:
                return f"HTTP {status.group(1)}: not an Autodiscover service."
        return f"No Autodiscover answer ({type(error).__name__})."

    def _http_candidate(self, url: str) -> str | None:
        """GET ``url`` without credentials; return the HTTPS redirect it names, if allowed."""
        log.info("Autodiscover: unauthenticated GET %s", url)
        try:
            with ews.http_session(self.tls_policy) as session:
                response = session.get(url, allow_redirects=False, timeout=self.timeout)
        except requests.RequestException as error:
            parts = urlsplit(url)
            self._record(url, self._describe_error(error, parts))
            return None
        location = response.headers.get("Location", "")
        if response.status_code not in (301, 302, 307, 308) or not location:
            self._record(url, f"HTTP {response.status_code}, no redirect.")
            return None
        self._record(url, f"HTTP redirect to {location}")
        target = urlsplit(location)
        if target.scheme != "https":
            self._record(
                location,
                "Not followed: a plain-HTTP address never receives credentials.",
            )
            return None
        redirect = _Redirect(url, f"https://{target.netloc}{SOAP_PATH}")
        return redirect.target if self._may_follow(redirect) else None

    def _srv_candidate(self, domain: str) -> str | None:
        name = f"_autodiscover._tcp.{domain}"
        try:
            records = self.srv_lookup(name, self.timeout)
        except (dns.exception.DNSException, OSError) as error:
            self._record(f"DNS SRV {name}", f"No record ({type(error).__name__}).")
            return None
        # RFC 2782: the lowest priority value first, then the highest weight.
        usable = sorted(records, key=lambda record: (record[0], -record[1]))
        if not usable:
            self._record(f"DNS SRV {name}", "No record.")
            return None
        _, _, port, target = usable[0]
        host = target.rstrip(".")
        netloc = host if port == 443 else f"{host}:{port}"
        url = f"https://{netloc}{SOAP_PATH}"
        self._record(f"DNS SRV {name}", f"Points to {host} port {port}.")
        redirect = _Redirect(f"DNS SRV {name}", url)
        return url if self._may_follow(redirect) else None

    # -- checks ---------------------------------------------------------------------

    def _may_follow(self, redirect: _Redirect) -> bool:
        """Check a URL redirect; raise when it needs the administrator, False to skip it."""
        target = urlsplit(redirect.target)
        if target.scheme != "https":
            self._record(
                redirect.target,
                "Not followed: a plain-HTTP address never receives credentials.",
            )
            return False
        host = (target.hostname or "").lower()
        self._check_on_premises(host, redirect.source)
        source_host = (urlsplit(redirect.source).hostname or "").lower()
        if host != source_host and host not in self.allowed_hosts:
            raise RedirectNeedsConfirmation(
                redirect.source, redirect.target, host, self.attempts
            )
        return True

    def _check_on_premises(self, host_or_address: str, source: str) -> None:
        if not self.keep_on_premises or not is_microsoft_365(host_or_address):
            return
        self._record(source, f"Points to Exchange Online ({host_or_address}).")
        raise MailboxInMicrosoft365(
            f"The mailbox lives in Microsoft 365: Autodiscover responded with "
            f"{host_or_address}, which belongs to Exchange Online.",
            "Use a Microsoft 365 account for this mailbox; Exchange Online does not "
            "accept the password sign-in that this account type uses. If the "
            "mailbox really is on your own server, ask the Exchange administrator "
            "why Autodiscover points to Microsoft 365, or enter the EWS URL.",
            self.attempts,
        )

    def _count_redirect(self) -> None:
        self.redirects += 1
        if self.redirects > MAX_REDIRECTS:
            raise AutodiscoverFailed(
                f"Autodiscover was redirected more than {MAX_REDIRECTS} times.",
                "The Autodiscover configuration loops. Enter the EWS URL instead, "
                "and tell the Exchange administrator.",
                self.attempts,
            )

    def _record(self, url: str, answer: str) -> None:
        log.info("Autodiscover: %s responded: %s", url, answer)
        self.attempts.append(Attempt(url, answer))

    # -- the result -----------------------------------------------------------------

    def _failure(self, address: str) -> AutodiscoverFailed:
        domain = address.rsplit("@", 1)[-1]
        if self.unauthorized:
            return AutodiscoverFailed(
                f"Autodiscover for {domain} rejected the user name "
                f"{self.username} or its password.",
                "Check the password, and write the user name as DOMAIN\\user or "
                "as the user principal name. If both are right, try the other "
                "authentication.",
                self.attempts,
                step=str(Step.AUTHENTICATION),
            )
        if self.no_mailbox:
            return AutodiscoverFailed(
                f"Autodiscover found no mailbox with the address {address}.",
                "Check the mailbox address for typing errors.",
                self.attempts,
            )
        return AutodiscoverFailed(
            f"Autodiscover found no Exchange server for {domain}.",
            "Each address tried is listed with what it answered. Enter the EWS "
            "URL (usually https://mail server/EWS/Exchange.asmx), or ask the "
            "Exchange administrator to publish Autodiscover for this domain.",
            self.attempts,
            certificate=self.certificate,
        )

    def _finish(self, address: str, response: UserResponse) -> Discovery:
        settings = response.user_settings or {}
        ews_url = settings.get("internal_ews_url") or settings.get("external_ews_url")
        if not ews_url:
            raise AutodiscoverFailed(
                "Autodiscover returned no EWS URL for this mailbox.",
                "Enter the EWS URL, or ask the Exchange administrator to set the "
                "EWS virtual directory's internal or external URL.",
                self.attempts,
            )
        parts = urlsplit(ews_url)
        self._check_on_premises((parts.hostname or "").lower(), ews_url)
        if parts.scheme != "https":
            raise AutodiscoverFailed(
                f"Autodiscover returned a plain-HTTP EWS URL, {ews_url}.",
                "The portal sends passwords only over HTTPS. Ask the Exchange "
                "administrator to publish an https:// EWS URL, or enter one.",
                self.attempts,
            )

        authentication, offered, note = self._choose_authentication(ews_url)
        return Discovery(
            for_address=self.start_address,
            address=settings.get("auto_discover_smtp_address") or address,
            ews_url=ews_url,
            authentication=authentication,
            server_version=_build_from_cas_version(settings.get("cas_version", "")),
            display_name=settings.get("user_display_name", ""),
            offered=offered,
            note=note,
            attempts=self.attempts,
        )

    def _choose_authentication(
        self, ews_url: str
    ) -> tuple[ews.Authentication, list[str], str]:
        """Ask the EWS endpoint, without credentials, which schemes it offers."""
        try:
            with ews.http_session(self.tls_policy) as session:
                response = session.post(
                    ews_url, data=b"", allow_redirects=False, timeout=self.timeout
                )
        except requests.RequestException as error:
            log.info(
                "Autodiscover: probing %s failed: %s", ews_url, type(error).__name__
            )
            return self.authentication, [], ""
        offered = _offered_schemes(response.headers.get("WWW-Authenticate", ""))
        self._record(
            ews_url,
            f"HTTP {response.status_code}, offers "
            f"{', '.join(offered) if offered else 'no sign-in scheme'}.",
        )
        chosen = ews.AUTHENTICATION_LABELS[self.authentication]
        if not offered or chosen.lower() in (name.lower() for name in offered):
            return self.authentication, offered, ""
        for candidate in (ews.Authentication.NTLM, ews.Authentication.BASIC):
            label = ews.AUTHENTICATION_LABELS[candidate]
            if label.lower() in (name.lower() for name in offered):
                return (
                    candidate,
                    offered,
                    f"The EWS endpoint does not offer {chosen}, so {label} is used.",
                )
        raise AutodiscoverFailed(
            f"The EWS endpoint {ews_url} offers only {', '.join(offered)}.",
            "The portal signs in with NTLM or Basic. Ask the Exchange administrator "
            "to enable one of them on the EWS virtual directory.",
            self.attempts,
            step=str(Step.AUTHENTICATION),
        )


def _offered_schemes(header: str) -> list[str]:
    """Return the schemes of a (joined) WWW-Authenticate header, such as ["NTLM", "Basic"]."""
    schemes = []
    for part in header.split(","):
        word = part.strip().split(" ", 1)[0]
        if word and "=" not in word and word not in schemes:
            schemes.append(word)
    return schemes


def _build_from_cas_version(value: str) -> str:
    """Turn a CasVersion such as "15.02.1544.004" into "15.2.1544.4"."""
    try:
        return ".".join(str(int(part)) for part in value.split(".")) if value else ""
    except ValueError:
        return ""


def lookup_srv(name: str, timeout: float) -> list[tuple[int, int, int, str]]:
    """Return (priority, weight, port, target) of the SRV records of ``name``."""
    try:
        answer = dns.resolver.resolve(name, "SRV", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return [
        (record.priority, record.weight, record.port, record.target.to_text())
        for record in answer
    ]


def discover(
    address: str,
    *,
    username: str,
    password: str,
    authentication: ews.Authentication,
    candidates: list[str],
    keep_on_premises: bool = True,
    allowed_hosts: set[str] = frozenset(),
    tls_policy: ews.TlsPolicy = NO_PIN,
    timeout: float = 30.0,
    srv_lookup: SrvLookup | None = None,
) -> Discovery:
    """Find the EWS endpoint of ``address``; blocks for up to a few timeouts per candidate.

    Raises AutodiscoverFailed (MailboxInMicrosoft365 among them) or
    RedirectNeedsConfirmation. No message contains the password.
    """
    search = _Search(
        username=username,
        password=password,
        authentication=authentication,
        candidates=candidates,
        keep_on_premises=keep_on_premises,
        allowed_hosts=set(allowed_hosts),
        tls_policy=tls_policy,
        timeout=timeout,
        srv_lookup=srv_lookup,
    )
    log.info("Autodiscover started for %s", address)
    try:
        found = search.run(address.strip().lower())
    except AutodiscoverFailed as failure:
        failure.summary = ews.scrub(failure.summary, username, password)
        log.info("Autodiscover failed for %s: %s", address, failure.summary)
        raise
    except RedirectNeedsConfirmation as redirect:
        log.info("Autodiscover for %s stopped at %s", address, redirect)
        raise
    finally:
        # A server may echo what it received; attempts are shown on the page.
        for attempt in search.attempts:
            attempt.answer = ews.scrub(attempt.answer, username, password)
    log.info("Autodiscover for %s found %s", address, found.ews_url)
    return found


def as_transport_error(failure: AutodiscoverFailed) -> TransportError:
    """Return the failure in the shape the test results show."""
    tried = "; ".join(
        f"{attempt.url}: {attempt.answer}" for attempt in failure.attempts
    )
    return TransportError(
        failure.step,  # type: ignore[arg-type]  (a step of its own: autodiscover)
        failure.summary,
        failure.advice,
        reply=tried,
        certificate=failure.certificate,
    )
