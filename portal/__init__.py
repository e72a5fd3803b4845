"""The email account portal: a Flask application factory."""

import logging

from flask import Flask

from .config import load_settings


def create_app(config: dict | None = None) -> Flask:
    """Create the portal.

    ``config`` overrides the settings read from ``PORTAL_*`` variables; tests
    use it to choose a database and switch the background worker off.
    """
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder="../templates",
        static_folder="../static",
    )
    app.config.from_mapping(load_settings(app.instance_path))
    if config:
        app.config.from_mapping(config)

    configure_logging(app)
    register_extensions(app)
    register_security(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_template_helpers(app)
    register_commands(app)
    return app


def configure_logging(app: Flask) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


def register_extensions(app: Flask) -> None:
    from . import models  # noqa: F401  (tables must be known to Migrate)
    from .auth.session import load_staff_member
    from .extensions import csrf, db, htmx, limiter, login_manager, migrate

    db.init_app(app)
    migrate.init_app(
        app, db, directory=str(app.root_path + "/../migrations"), render_as_batch=True
    )
    csrf.init_app(app)
    htmx.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.sign_in"
    login_manager.login_message = "Please sign in to continue."
    login_manager.login_message_category = "info"
    login_manager.user_loader(load_staff_member)


def register_security(app: Flask) -> None:
    from .security import register

    register(app)


def register_blueprints(app: Flask) -> None:
    from .admin import bp as admin_bp
    from .auth import bp as auth_bp
    from .compose import bp as compose_bp
    from .main import bp as main_bp
    from .personal import bp as personal_bp

    app.register_blueprint(main_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(personal_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(compose_bp)


def register_error_handlers(app: Flask) -> None:
    from .errors import register

    register(app)


def register_template_helpers(app: Flask) -> None:
    from .templating import register

    register(app)


def register_commands(app: Flask) -> None:
    from .cli import register

    register(app)
