"""Entry point for production servers: ``gunicorn wsgi:app``.

Run ``flask --app portal init`` once before starting, to create the schema
and the first administrator.
"""

from portal import create_app

app = create_app()
