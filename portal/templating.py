"""Template filters, globals, and the page-or-fragment rendering helper."""

from datetime import UTC, datetime

from flask import Flask, render_template

from .accounts import types as account_types
from .extensions import htmx
from .services.access import SECURITY_HELP, SECURITY_LABELS

HTMX_SCRIPT = "js/htmx-2.0.11.min.js"


def wants_fragment() -> bool:
    """True for an htmx request that swaps part of a page.

    Boosted requests replace the whole body, so they get the full page.
    """
    return bool(htmx) and not htmx.boosted


def render_page_or_fragment(page: str, fragment: str, **context) -> str:
    return render_template(fragment if wants_fragment() else page, **context)


def format_timestamp(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:  # SQLite drops the zone; stored values are UTC
        value = value.replace(tzinfo=UTC)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def register(app: Flask) -> None:
    app.jinja_env.filters["timestamp"] = format_timestamp
    app.jinja_env.globals["htmx_script"] = HTMX_SCRIPT
    app.jinja_env.globals["now"] = lambda: datetime.now(UTC)
    app.jinja_env.globals["security_labels"] = {
        str(key): label for key, label in SECURITY_LABELS.items()
    }
    app.jinja_env.globals["account_type_label"] = account_types.describe
    app.jinja_env.globals["security_help"] = {
        str(key): text for key, text in SECURITY_HELP.items()
    }
