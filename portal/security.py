"""Response headers and session cookie settings that harden every page."""

from urllib.parse import urlsplit

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface


# No inline script or style anywhere: htmx is a file from /static and its
# indicator styles are switched off in the htmx-config meta tag. Forms may
# lead only to this site and to the identity providers' sign-in pages, which
# the Microsoft 365 and Google connections redirect to.
def content_security_policy(sign_in_origins: list[str]) -> str:
    form_targets = " ".join(["'self'", *sorted(set(sign_in_origins))])
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            f"form-action {form_targets}",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "object-src 'none'",
        ]
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def sign_in_origins(config) -> list[str]:
    from .integrations.microsoft import CLOUDS

    urls = [config.get("MICROSOFT_LOGIN_URL", ""), config.get("GOOGLE_AUTH_URL", "")]
    urls += [cloud.login_url for cloud in CLOUDS.values()]
    return [origin for origin in map(_origin, urls) if origin]


HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class SessionInterface(SecureCookieSessionInterface):
    """Marks the session cookie Secure when the request came over HTTPS, or
    always when ``SESSION_COOKIE_SECURE`` is set."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)


def register(app: Flask) -> None:
    app.session_interface = SessionInterface()
    policy = content_security_policy(sign_in_origins(app.config))

    @app.after_request
    def add_security_headers(response):
        response.headers.setdefault("Content-Security-Policy", policy)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if "text/html" in response.content_type:
            # Pages carry a CSRF token and personal data: never cache them.
            response.headers.setdefault("Cache-Control", "no-store")
        return response
