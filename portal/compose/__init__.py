"""Composing messages and following their delivery."""

from flask import Blueprint

bp = Blueprint("compose", __name__)

from . import routes  # noqa: E402,F401
