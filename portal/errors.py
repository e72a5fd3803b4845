"""Error pages, and error fragments for htmx requests."""

import logging

from flask import Flask, render_template
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from .extensions import db, htmx
from .ratelimits import RateLimited

log = logging.getLogger(__name__)

TITLES = {
    400: "Bad request",
    403: "Not allowed",
    404: "Page not found",
    405: "Method not allowed",
    413: "Request too large",
    429: "Too many requests",
    500: "Something went wrong",
}

MESSAGES = {
    403: "You do not have access to this page or action.",
    404: "There is nothing at this address. It may have been deleted.",
    405: "This address does not accept that kind of request.",
}


def render_error(status: int, message: str):
    title = TITLES.get(status, "Error")
    template = "errors/_error.html" if htmx else "errors/error.html"
    return render_template(
        template, status=status, title=title, message=message
    ), status


def register(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(error):
        return render_error(
            400,
            "The form had expired or was sent from another site. Reload the page "
            "and try again.",
        )

    @app.errorhandler(RateLimited)
    def rate_limited(error):
        body, status = render_error(429, error.message)
        return body, status, {"Retry-After": str(error.retry_after)}

    @app.errorhandler(HTTPException)
    def http_error(error):
        status = error.code or 500
        message = error.description
        if message == type(error).description:  # werkzeug's generic wording
            message = MESSAGES.get(status, message)
        return render_error(status, message or "")

    @app.errorhandler(Exception)
    def unexpected_error(error):
        db.session.rollback()
        log.exception("Unhandled error")
        return render_error(
            500,
            "The portal hit an unexpected error; the details are in its log. "
            "Nothing was saved by this request.",
        )
