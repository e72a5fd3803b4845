"""Fingerprints, certificate details and SSL contexts."""

import ssl

import pytest

from portal.transports import tls
from portal.transports.base import Step, TransportError

FINGERPRINT = ":".join(f"{i:02X}" for i in range(0xA0, 0xC0))


@pytest.mark.parametrize(
    "value",
    [
        FINGERPRINT,
        FINGERPRINT.lower(),
        FINGERPRINT.replace(":", ""),
        FINGERPRINT.replace(":", " "),
        f"  {FINGERPRINT.replace(':', '-').lower()}  ",
    ],
    ids=["normalized", "lower", "bare", "spaces", "hyphens"],
)
def test_normalize_fingerprint_accepts_common_forms(value):
    assert tls.normalize_fingerprint(value) == FINGERPRINT


@pytest.mark.parametrize(
    "value",
    ["", "AB:CD", FINGERPRINT + ":00", FINGERPRINT.replace("A0", "G0")],
    ids=["empty", "short", "long", "not-hex"],
)
def test_normalize_fingerprint_rejects_invalid(value):
    with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
        tls.normalize_fingerprint(value)


def test_describe_certificate_reads_details(certificates):
    der = ssl.PEM_cert_to_DER_cert(certificates.server.cert_path.read_text())

    info = tls.describe_certificate(der)

    assert info.subject == "CN=localhost,O=Portal tests"
    assert info.issuer == "CN=Portal test CA,O=Portal tests"
    assert info.sha256 == certificates.server.sha256
    assert info.alt_names == ("localhost", "127.0.0.1")
    assert info.not_after.endswith("+00:00")


def test_default_context_verifies():
    context = tls.create_ssl_context()

    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_pinned_context_skips_ca_check():
    context = tls.create_ssl_context(FINGERPRINT)

    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False


def test_invalid_pin_fails_at_tls():
    with pytest.raises(TransportError) as caught:
        tls.create_ssl_context("12:34")

    assert caught.value.step is Step.TLS


def test_check_pinned_certificate_accepts_match(certificates):
    der = ssl.PEM_cert_to_DER_cert(certificates.server.cert_path.read_text())

    tls.check_pinned_certificate(der, certificates.server.sha256.lower())


def test_check_pinned_certificate_rejects_other(certificates):
    der = ssl.PEM_cert_to_DER_cert(certificates.server.cert_path.read_text())

    with pytest.raises(TransportError) as caught:
        tls.check_pinned_certificate(der, certificates.self_signed.sha256)

    assert caught.value.step is Step.TLS
    assert caught.value.certificate is not None
    assert caught.value.certificate.sha256 == certificates.server.sha256
