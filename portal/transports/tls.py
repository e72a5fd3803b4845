"""TLS for the mail transports: SSL contexts, pinned certificates, TLS failures.

Certificate verification is on by default, against the system's certificate
authorities and with a host name check. An account may instead trust exactly
one certificate, usually a self-signed one, by its SHA-256 fingerprint. The
handshake then skips CA verification, and the transport compares the peer
certificate with the fingerprint before it sends credentials.
"""

import functools
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .base import (
    CertificateInfo,
    Security,
    ServerEndpoint,
    Step,
    TransportError,
    open_connection,
    timed_out,
)

log = logging.getLogger(__name__)

_SEPARATORS = re.compile(r"[\s:-]")
_SHA256_HEX = re.compile(r"[0-9A-F]{64}")

# OpenSSL error reasons for a handshake that received something other than a
# TLS record, such as the plain-text greeting of an SMTP, IMAP or POP3 server.
# NOTE: the tests have seen only WRONG_VERSION_NUMBER, with OpenSSL 3.0. The
# other reasons are OpenSSL record errors for other non-TLS input, unseen.
_PLAINTEXT_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "UNKNOWN_PROTOCOL",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LAYER_FAILURE",
    }
)

# OpenSSL X509_V_ERR_* codes that get their own wording.
_SELF_SIGNED = {18}  # DEPTH_ZERO_SELF_SIGNED_CERT
_UNKNOWN_ISSUER = {2, 19, 20, 21}  # issuer missing, or a self-signed root
_EXPIRED = 10
_NOT_YET_VALID = 9
_WRONG_HOST = {62, 64}  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH


@dataclass(frozen=True)
class WellKnownPorts:
    """The usual ports of a protocol, named in advice about the security setting."""

    protocol: str  # "SMTP", "IMAP" or "POP3"
    implicit_tls: int
    starttls: int


def normalize_fingerprint(value: str) -> str:
    """Return a SHA-256 fingerprint as upper-case hex pairs joined by colons.

    Accepts 64 hex digits in any case, bare or separated by colons, spaces or
    hyphens. Raises ValueError for anything else.
    """
    digits = _SEPARATORS.sub("", value).upper()
    if not _SHA256_HEX.fullmatch(digits):
        raise ValueError(
            f"{value!r} is not a SHA-256 fingerprint: expected 64 hex digits, "
            "optionally in pairs separated by colons."
        )
    return ":".join(digits[i : i + 2] for i in range(0, 64, 2))


def certificate_fingerprint(der: bytes) -> str:
    """Return the SHA-256 fingerprint of a DER certificate, in normalized form."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return ":".join(f"{byte:02X}" for byte in digest.finalize())


def describe_certificate(der: bytes) -> CertificateInfo:
    """Parse a DER certificate into the details shown to a user who may trust it."""
    certificate = x509.load_der_x509_certificate(der)
    try:
        extension = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        alt_names: tuple[str, ...] = ()
    else:
        names = extension.value
        alt_names = tuple(names.get_values_for_type(x509.DNSName)) + tuple(
            str(address) for address in names.get_values_for_type(x509.IPAddress)
        )

    return CertificateInfo(
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        sha256=certificate_fingerprint(der),
        not_after=certificate.not_valid_after_utc.isoformat(),
        alt_names=alt_names,
    )


def create_ssl_context(
    trusted_fingerprint: str = "", *, cafile: str | None = None
) -> ssl.SSLContext:
    """Return the client context for an account's TLS connections.

    Without a fingerprint the context verifies the chain and the host name.
    ``cafile`` replaces the system's certificate authorities with the ones in
    that PEM file, which the tests use for their own CA. With a fingerprint the
    context verifies nothing, and the caller must pass the peer certificate to
    check_pinned_certificate() before it sends credentials. Raises
    TransportError if the fingerprint is malformed.
    """
    if not trusted_fingerprint:
        return _verifying_context(cafile)

    try:
        normalize_fingerprint(trusted_fingerprint)
    except ValueError:
        raise TransportError(
            Step.TLS,
            "The trusted certificate fingerprint is not a valid SHA-256 fingerprint.",
            "Enter the fingerprint as 64 hex digits, optionally in pairs separated "
            "by colons, or clear it to verify the certificate normally.",
        ) from None
    return create_unverified_context()


@functools.lru_cache(maxsize=8)
def _verifying_context(cafile: str | None) -> ssl.SSLContext:
    """One shared verifying context per CA file.

    Loading the system's certificate authorities takes tens of milliseconds,
    so contexts are built once and reused; nothing changes them after this.
    NOTE: certificate authorities added to the system after start-up are
    used only after the portal restarts.
    """
    return ssl.create_default_context(cafile=cafile)


def create_unverified_context() -> ssl.SSLContext:
    """Return a client context that accepts any certificate.

    Use it only to fetch a certificate for display, or together with
    check_pinned_certificate().
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def check_pinned_certificate(der: bytes | None, trusted_fingerprint: str) -> None:
    """Raise TransportError unless the peer certificate has the pinned fingerprint.

    Does nothing when no fingerprint is pinned, because the handshake has
    already verified the certificate then.
    """
    if not trusted_fingerprint:
        return

    if der is None:
        raise TransportError(
            Step.TLS,
            "The server sent no certificate, so the trusted fingerprint cannot "
            "be checked.",
            "Ask the mail server's administrator to configure a certificate.",
        )

    expected = normalize_fingerprint(trusted_fingerprint)
    if certificate_fingerprint(der) == expected:
        return

    certificate = describe_certificate(der)
    log.warning(
        "pinned certificate mismatch: expected %s, received %s (%s)",
        expected,
        certificate.sha256,
        certificate.subject,
    )
    raise TransportError(
        Step.TLS,
        f"The server's certificate changed: it is now {certificate.subject} "
        f"with SHA-256 fingerprint {certificate.sha256}.",
        f"The trusted fingerprint is {expected}. Confirm with the mail server's "
        "administrator that the certificate was replaced on purpose, then trust "
        "the new one. The password was not sent.",
        certificate=certificate,
    )


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    """Return the DER certificate of the peer, even if it was not verified."""
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)


def fetch_certificate(host: str, port: int, timeout: float) -> bytes | None:
    """Return the certificate of an implicit-TLS server without verifying it.

    Raises OSError (ssl.SSLError and TimeoutError included) if the TLS
    handshake fails, so speaks_implicit_tls() uses it as a probe.
    """
    try:
        connection = open_connection(host, port, timeout)
    except TransportError as error:
        # Callers treat any failure to fetch as an OSError.
        raise ConnectionError(error.summary) from None
    with connection:
        context = create_unverified_context()
        with context.wrap_socket(connection, server_hostname=host) as tls_socket:
            return tls_socket.getpeercert(binary_form=True)


def speaks_implicit_tls(host: str, port: int, timeout: float) -> bool:
    """Return whether ``port`` completes a TLS handshake right away.

    Used after a greeting timeout, to distinguish an implicit-TLS port from a
    server that accepts connections and never sends a greeting.
    """
    log.info("no greeting from %s port %d, retrying with a TLS handshake", host, port)
    try:
        fetch_certificate(host, port, timeout)
    except OSError as error:
        log.info("the TLS handshake failed as well: %s", type(error).__name__)
        return False
    return True


def tls_failure(
    error: BaseException,
    host: str,
    port: int,
    security: Security,
    ports: WellKnownPorts,
    fetch_peer_certificate: Callable[[], bytes | None],
) -> TransportError | None:
    """Return the failure for an ssl.SSLError in the cause chain of ``error``.

    Returns None when the chain has no TLS error. ``fetch_peer_certificate``
    is called only for a certificate that did not verify, to show it to the
    user.
    """
    ssl_error = find_ssl_error(error)
    if ssl_error is None:
        return None
    if isinstance(ssl_error, ssl.SSLCertVerificationError):
        return certificate_error(ssl_error, host, fetch_peer_certificate())
    if security is Security.SSL and is_plaintext_reply(ssl_error):
        return plaintext_port_error(host, port, ports)
    return handshake_error(ssl_error, host, port)


def find_ssl_error(error: BaseException) -> ssl.SSLError | None:
    """Return the ssl.SSLError in the cause chain of ``error``, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def is_plaintext_reply(error: ssl.SSLError) -> bool:
    """Return whether a handshake failed because the server did not speak TLS."""
    return error.reason in _PLAINTEXT_REASONS


def certificate_error(
    error: ssl.SSLCertVerificationError, host: str, der: bytes | None
) -> TransportError:
    """Return the failure for a certificate that did not verify.

    ``der`` is the certificate fetched in a second, unverified handshake, or
    None if that failed. It becomes the error's ``certificate`` so that the
    user can decide to trust it.
    """
    certificate = describe_certificate(der) if der else None
    code = error.verify_code
    if code in _SELF_SIGNED:
        problem = "is self-signed"
    elif code in _UNKNOWN_ISSUER:
        problem = (
            "was issued by a certificate authority that this portal does not trust"
        )
    elif code == _EXPIRED:
        expiry = f" on {certificate.not_after}" if certificate else ""
        problem = f"expired{expiry}"
    elif code == _NOT_YET_VALID:
        problem = "is not valid yet"
    elif code in _WRONG_HOST:
        problem = f"is not valid for the name {host}"
    else:
        problem = f"could not be verified ({error.verify_message})"
    summary = f"The server's certificate {problem}."

    if code in _WRONG_HOST and certificate and certificate.alt_names:
        names = ", ".join(certificate.alt_names)
        advice = (
            f"The certificate is for {names}. Use one of those names as the host, "
            "or trust this certificate by its fingerprint if you know it is right."
        )
    elif certificate:
        advice = (
            f"If your mail administrator confirms the SHA-256 fingerprint "
            f"{certificate.sha256}, you can trust this certificate. Otherwise ask "
            "them for a certificate from a public certificate authority."
        )
    else:
        advice = (
            "Ask the mail server's administrator for a certificate from a public "
            "certificate authority."
        )
    log.warning("certificate verification failed for %s: %s", host, error)
    return TransportError(Step.TLS, summary, advice, certificate=certificate)


def handshake_error(error: ssl.SSLError, host: str, port: int) -> TransportError:
    """Return the failure for a TLS handshake that failed for another reason."""
    reason = (error.reason or str(error)).replace("_", " ").lower()
    return TransportError(
        Step.TLS,
        f"The TLS handshake with {host} port {port} failed: {reason}.",
        "The server may offer only old TLS versions or ciphers that this portal "
        "rejects. Ask its administrator to enable TLS 1.2 or later.",
    )


def plaintext_port_error(host: str, port: int, ports: WellKnownPorts) -> TransportError:
    """Return the failure for implicit TLS used on a port that speaks plain text."""
    return TransportError(
        Step.TLS,
        f"{host} port {port} does not use implicit TLS: the server answered in "
        "plain text.",
        f"Choose STARTTLS security for port {port} (the usual {ports.protocol} "
        f"STARTTLS port is {ports.starttls}), or use port {ports.implicit_tls} "
        "with SSL/TLS.",
    )


def implicit_tls_port_error(
    host: str, port: int, ports: WellKnownPorts, security: Security
) -> TransportError:
    """Return the failure for STARTTLS or no security used on an implicit-TLS port.

    Such a port waits for a TLS handshake from the first byte, so a client that
    waits for a plain-text greeting receives nothing until it times out.
    """
    chosen = "STARTTLS" if security is Security.STARTTLS else "no security"
    return TransportError(
        Step.TLS,
        f"{host} port {port} expects implicit TLS (SSL/TLS), but the account "
        f"uses {chosen}.",
        f"Choose SSL/TLS security for port {port}, or STARTTLS security with the "
        f"{ports.protocol} STARTTLS port {ports.starttls}.",
    )


def silence_failure(
    settings: ServerEndpoint,
    ports: WellKnownPorts,
    activity: str,
    *,
    waiting_for_greeting: bool,
) -> TransportError:
    """Return the failure for a server that went silent during ``activity``.

    A silent greeting on a connection without implicit TLS often means an
    implicit-TLS port, which a short probe handshake confirms. It blocks, so
    async code calls it in a thread.
    """
    host, port = settings.host, settings.port
    if (
        waiting_for_greeting
        and settings.security is not Security.SSL
        and speaks_implicit_tls(host, port, settings.timeout)
    ):
        return implicit_tls_port_error(host, port, ports, settings.security)
    return timed_out(host, port, settings.timeout, activity)
