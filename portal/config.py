"""Configuration read from ``PORTAL_*`` environment variables.

Two modes exist. The embedded default (``PORTAL_MODE`` unset or ``embedded``)
runs on an SQLite file in the instance folder and creates its own session and
encryption keys there on first start. ``PORTAL_MODE=production`` creates
nothing: every required variable must be set, and start-up stops with a
message naming the first one that is missing.
"""

import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet

PREFIX = "PORTAL_"
REQUIRED_IN_PRODUCTION = ("SECRET_KEY", "ENCRYPTION_KEYS", "DATABASE_URL")


class ConfigurationError(RuntimeError):
    """A required setting is missing or malformed."""


def load_settings(instance_path: str, environ: dict[str, str] | None = None) -> dict:
    """Build the Flask config mapping from the environment.

    ``environ`` defaults to ``os.environ``; tests pass their own mapping.
    """
    environ = os.environ if environ is None else environ
    mode = environ.get(PREFIX + "MODE", "embedded")
    if mode not in ("embedded", "production"):
        raise ConfigurationError(
            f"{PREFIX}MODE must be 'embedded' or 'production', not {mode!r}."
        )

    if mode == "production":
        for name in REQUIRED_IN_PRODUCTION:
            if not environ.get(PREFIX + name, "").strip():
                raise ConfigurationError(
                    f"{PREFIX}{name} is not set. It is required when "
                    f"{PREFIX}MODE=production."
                )

    instance = Path(instance_path)
    settings = {
        "PORTAL_MODE": mode,
        "SECRET_KEY": environ.get(PREFIX + "SECRET_KEY")
        or _instance_secret(instance / "session_key", secrets.token_urlsafe(48)),
        "ENCRYPTION_KEYS": _parse_keys(
            environ.get(PREFIX + "ENCRYPTION_KEYS")
            or _instance_secret(
                instance / "encryption_keys", Fernet.generate_key().decode()
            )
        ),
        "SQLALCHEMY_DATABASE_URI": environ.get(PREFIX + "DATABASE_URL")
        or f"sqlite:///{instance / 'portal.sqlite3'}",
        "ADMIN_PASSWORD": environ.get(PREFIX + "ADMIN_PASSWORD") or None,
        "START_WORKER": environ.get(PREFIX + "START_WORKER", "1") == "1",
        "SMTP_TIMEOUT": float(environ.get(PREFIX + "SMTP_TIMEOUT", "15")),
        # Cloud endpoints. The defaults are the providers' own; tests point
        # them at local fakes. Microsoft's sign-in and Graph hosts depend on
        # the tenant's cloud unless these override them.
        "MICROSOFT_LOGIN_URL": environ.get(PREFIX + "MICROSOFT_LOGIN_URL", ""),
        "MICROSOFT_GRAPH_URL": environ.get(PREFIX + "MICROSOFT_GRAPH_URL", ""),
        # Microsoft 365: seconds for each sign-in or Graph request; retries of
        # a throttled (429) or unavailable (503) Graph request, and the longest
        # Retry-After in seconds that one retry waits for. A longer one is left
        # to the outbox's later attempt.
        "MICROSOFT_TIMEOUT": float(environ.get(PREFIX + "MICROSOFT_TIMEOUT", "30")),
        "MICROSOFT_GRAPH_MAX_RETRIES": int(
            environ.get(PREFIX + "MICROSOFT_GRAPH_MAX_RETRIES", "3")
        ),
        "MICROSOFT_GRAPH_MAX_RETRY_WAIT": float(
            environ.get(PREFIX + "MICROSOFT_GRAPH_MAX_RETRY_WAIT", "30")
        ),
        "GOOGLE_AUTH_URL": environ.get(
            PREFIX + "GOOGLE_AUTH_URL", "https://accounts.google.com/o/oauth2/v2/auth"
        ),
        "GOOGLE_TOKEN_URL": environ.get(
            PREFIX + "GOOGLE_TOKEN_URL", "https://oauth2.googleapis.com/token"
        ),
        "GOOGLE_GMAIL_URL": environ.get(
            PREFIX + "GOOGLE_GMAIL_URL", "https://gmail.googleapis.com"
        ),
        "GOOGLE_DIRECTORY_URL": environ.get(
            PREFIX + "GOOGLE_DIRECTORY_URL", "https://admin.googleapis.com"
        ),
        # Gmail API rate limits and server errors: retries within one send,
        # and the longest wait before one retry in seconds. A longer
        # Retry-After is left to the outbox's later attempt.
        "GOOGLE_MAX_RETRIES": int(environ.get(PREFIX + "GOOGLE_MAX_RETRIES", "3")),
        "GOOGLE_MAX_RETRY_WAIT": float(
            environ.get(PREFIX + "GOOGLE_MAX_RETRY_WAIT", "30")
        ),
        # On-premises Exchange (EWS): seconds for each HTTP request; the
        # Autodiscover candidates in order ({domain} is the mailbox's domain,
        # "srv" the DNS SRV record); a PEM file of certificate authorities
        # that replaces the system's; retries after "server busy", and the
        # longest wait before one retry in seconds.
        "EXCHANGE_TIMEOUT": float(environ.get(PREFIX + "EXCHANGE_TIMEOUT", "30")),
        "EXCHANGE_AUTODISCOVER": environ.get(
            PREFIX + "EXCHANGE_AUTODISCOVER",
            "https://{domain}/autodiscover/autodiscover.svc "
            "https://autodiscover.{domain}/autodiscover/autodiscover.svc "
            "http://autodiscover.{domain}/autodiscover/autodiscover.xml srv",
        ),
        "EXCHANGE_CA_FILE": environ.get(PREFIX + "EXCHANGE_CA_FILE") or None,
        "EXCHANGE_BUSY_RETRIES": int(
            environ.get(PREFIX + "EXCHANGE_BUSY_RETRIES", "2")
        ),
        "EXCHANGE_MAX_BACK_OFF": float(
            environ.get(PREFIX + "EXCHANGE_MAX_BACK_OFF", "10")
        ),
        # The address this portal is reached at, for OAuth redirect URIs;
        # empty means the address of the current request.
        "PUBLIC_URL": environ.get(PREFIX + "PUBLIC_URL", "").rstrip("/"),
        # Rate limits: "memory://" suits one process; several processes need
        # a shared store such as "redis://host:6379".
        "RATELIMIT_STORAGE_URI": environ.get(
            PREFIX + "RATELIMIT_STORAGE_URI", "memory://"
        ),
        "SIGN_IN_LIMIT": environ.get(PREFIX + "SIGN_IN_LIMIT", "5/minute;20/hour"),
        "SIGN_IN_ADDRESS_LIMIT": environ.get(
            PREFIX + "SIGN_IN_ADDRESS_LIMIT", "30/10minutes"
        ),
        "TEST_LIMIT": environ.get(PREFIX + "TEST_LIMIT", "10/minute;60/hour"),
        # Destinations allowed besides the administrators' outbound policy,
        # comma-separated in the policy's notation (see services/outbound.py).
        "OUTBOUND_ALLOW": environ.get(PREFIX + "OUTBOUND_ALLOW", ""),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": environ.get(PREFIX + "SECURE_COOKIES", "0") == "1",
        "WTF_CSRF_TIME_LIMIT": None,
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
    }
    # Optional tuning of the delivery worker (portal.services.delivery).
    for name in (
        "DELIVERY_BATCH_SIZE",
        "DELIVERY_MAX_ATTEMPTS",
        "DELIVERY_FIRST_RETRY_SECONDS",
        "DELIVERY_LEASE_SECONDS",
        "DELIVERY_CONNECTIONS_PER_ACCOUNT",
    ):
        value = environ.get(PREFIX + name, "").strip()
        if value:
            try:
                settings[name] = float(value) if "SECONDS" in name else int(value)
            except ValueError as error:
                raise ConfigurationError(
                    f"{PREFIX}{name} must be a number, not {value!r}."
                ) from error
    return settings


def _parse_keys(value: str) -> list[str]:
    """Split a comma- or newline-separated key list; the first key encrypts."""
    keys = [key.strip() for key in value.replace("\n", ",").split(",") if key.strip()]
    if not keys:
        raise ConfigurationError(f"{PREFIX}ENCRYPTION_KEYS contains no key.")
    for key in keys:
        try:
            Fernet(key)
        except ValueError as error:
            raise ConfigurationError(
                f"{PREFIX}ENCRYPTION_KEYS contains a malformed key: each key must "
                "be 32 bytes in URL-safe base64 (generate one with "
                "`flask --app portal generate-key`)."
            ) from error
    return keys


def _instance_secret(path: Path, new_value: str) -> str:
    """Read a secret kept in the instance folder, creating it on first use.

    The file is created with mode 0600 so only the portal's user can read it.
    """
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(new_value + "\n")
    return new_value
