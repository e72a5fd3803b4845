"""Certificates for the test servers, made with ``cryptography``.

One test certificate authority signs the server certificates. Clients trust it
only when a test passes its file as ``cafile``, because it is never added to
the system's certificate store.
"""

import datetime
import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class CertificateFiles:
    """A PEM certificate with its private key and its SHA-256 fingerprint."""

    cert_path: Path
    key_path: Path
    sha256: str  # upper-case hex pairs separated by colons
    subject: str  # RFC 4514 form, such as "CN=localhost,O=Portal tests"

    def server_context(self) -> ssl.SSLContext:
        """Return a server-side SSL context that presents this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


@dataclass(frozen=True)
class TestCertificates:
    """The test CA and the server certificates that the tests need."""

    ca_path: Path
    server: CertificateFiles  # CA-signed, valid for localhost and 127.0.0.1
    wrong_host: CertificateFiles  # CA-signed, valid only for mail.example.invalid
    expired: CertificateFiles  # CA-signed for the loopback names, expired
    self_signed: CertificateFiles  # valid for the loopback names, no CA


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Portal tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_names(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue(
    directory: Path,
    stem: str,
    names: tuple[str, ...],
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    not_after: datetime.datetime,
) -> CertificateFiles:
    """Write a server certificate for ``names``, self-signed when no issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(names[0])
    issuer_name, signing_key = (
        (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    )
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - datetime.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(_alt_names(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
    )
    if issuer:
        # From Python 3.13 on, create_default_context() sets VERIFY_X509_STRICT,
        # and OpenSSL's strict mode rejects a CA-signed certificate without it.
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            False,
        )
    certificate = builder.sign(signing_key, hashes.SHA256())

    cert_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER))
    return CertificateFiles(
        cert_path=cert_path,
        key_path=key_path,
        sha256=":".join(f"{byte:02X}" for byte in digest.digest()),
        subject=subject.rfc4514_string(),
    )


def create_test_certificates(directory: Path) -> TestCertificates:
    """Write the test CA and every test server certificate into ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    next_year = now + datetime.timedelta(days=365)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Portal test CA")
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(next_year)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))

    ca = (ca_certificate, ca_key)
    return TestCertificates(
        ca_path=ca_path,
        server=_issue(
            directory, "server", LOOPBACK_NAMES, issuer=ca, not_after=next_year
        ),
        wrong_host=_issue(
            directory,
            "wrong-host",
            ("mail.example.invalid",),
            issuer=ca,
            not_after=next_year,
        ),
        expired=_issue(
            directory,
            "expired",
            LOOPBACK_NAMES,
            issuer=ca,
            not_after=now - datetime.timedelta(days=2),
        ),
        self_signed=_issue(
            directory, "self-signed", LOOPBACK_NAMES, issuer=None, not_after=next_year
        ),
    )
