"""Response headers and session cookie settings that harden every page."""

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface

# No inline script or style anywhere: htmx is a file from /static and its
# indicator styles are switched off in the htmx-config meta tag.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    ]
)

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
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

    @app.after_request
    def add_security_headers(response):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if "text/html" in response.content_type:
            # Pages carry a CSRF token and personal data: never cache them.
            response.headers.setdefault("Cache-Control", "no-store")
        return response
