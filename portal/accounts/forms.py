"""The Internet (SMTP/IMAP/POP3) account form, shared by personal and global pages."""

from collections.abc import Callable, Iterable

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    EmailField,
    Field,
    PasswordField,
    RadioField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import ValidationError

from .. import presets, validation
from ..integrations import mail_oauth
from ..services.access import SECURITY_HELP, SECURITY_LABELS, Security
from ..services.accounts import AUTH_NONE, AUTH_PASSWORD, oauth_provider

SECURITY_CHOICES = [
    SelectChoice("starttls", "STARTTLS"),
    SelectChoice("ssl", "SSL/TLS (implicit)"),
    SelectChoice("none", "None (unencrypted)"),
]
AUTH_CHOICES = [
    SelectChoice(AUTH_PASSWORD, "User name and password"),
    SelectChoice(
        mail_oauth.auth_choice(mail_oauth.GOOGLE), "OAuth2: sign in with Google"
    ),
    SelectChoice(
        mail_oauth.auth_choice(mail_oauth.MICROSOFT), "OAuth2: sign in with Microsoft"
    ),
    SelectChoice(AUTH_NONE, "None"),
]
READ_PROTOCOL_CHOICES = [
    SelectChoice("", "Do not read mail"),
    SelectChoice("imap", "IMAP"),
    SelectChoice("pop3", "POP3"),
]

SERVER_FIELDS = (
    "email_address",
    "smtp_host",
    "smtp_port",
    "smtp_security",
    "smtp_auth",
    "smtp_username",
    "smtp_password",
    "trusted_fingerprint",
)
READ_FIELDS = (
    "read_protocol",
    "read_host",
    "read_port",
    "read_security",
    "read_username",
    "read_password",
    "read_folder",
)
NAME_FIELDS = ("friendly_name", "description", "from_name", "enabled")


def normalised_by(function: Callable[[str], object]):
    """Wrap a ``validation`` function as a WTForms validator.

    The function's return value replaces the field's data, so the service
    receives normalised values (IDNA host names, integer ports).
    """

    def validator(form, field):
        if field.data in (None, ""):
            return
        try:
            field.data = function(field.data)
        except ValueError as error:
            raise ValidationError(str(error)) from error

    return validator


def header_value(max_length: int):
    return normalised_by(lambda value: validation.check_header_value(value, max_length))


class AccountForm(FlaskForm):
    """The steps every account type shares: the test destination, the names
    and, for new global accounts, the security choice."""

    test_to = EmailField(
        "Send the test message to",
        validators=[normalised_by(validation.normalise_email)],
    )

    friendly_name = StringField("Friendly name", validators=[header_value(100)])
    description = TextAreaField("Description")
    from_name = StringField("From display name", validators=[header_value(200)])
    enabled = BooleanField("Enabled", default=True)
    security = RadioField(
        "Security",
        choices=[
            SelectChoice(str(value), label, render_kw={"title": SECURITY_HELP[value]})
            for value, label in SECURITY_LABELS.items()
        ],
        default=str(Security.EVERYONE),
    )

    def validate_test_destination(self) -> bool:
        if not self.test_to.validate(self):
            return False
        if not self.test_to.data:
            self.test_to.errors.append("Enter the address the test message goes to.")
            return False
        return True

    def validate_names(self, include_security: bool = False) -> bool:
        """Validate the names step; ``security`` only where the form shows it."""
        ok = True
        names = NAME_FIELDS + (("security",) if include_security else ())
        for name in names:
            field = self[name]
            if isinstance(field.data, str):
                field.data = field.data.strip()
            if not field.validate(self):
                ok = False
        if not self.friendly_name.data:
            self.friendly_name.errors.append(
                "Enter a friendly name; it is shown in every list of accounts."
            )
            ok = False
        if self.description.data and len(self.description.data) > 500:
            self.description.errors.append("Keep the description to 500 characters.")
            ok = False
        return ok


class InternetAccountForm(AccountForm):
    preset = SelectField("Default settings", choices=[], validate_choice=False)

    email_address = EmailField(
        "Email address", validators=[normalised_by(validation.normalise_email)]
    )
    smtp_host = StringField(
        "SMTP server", validators=[normalised_by(validation.normalise_host)]
    )
    smtp_port = StringField(
        "SMTP port", default="587", validators=[normalised_by(validation.parse_port)]
    )
    smtp_security = SelectField(
        "SMTP security", choices=SECURITY_CHOICES, default="starttls"
    )
    smtp_auth = SelectField("Authentication", choices=AUTH_CHOICES, default="password")
    smtp_username = StringField("SMTP user name", validators=[header_value(320)])
    smtp_password = PasswordField("SMTP password")

    read_protocol = SelectField(
        "Read mail with", choices=READ_PROTOCOL_CHOICES, default=""
    )
    read_host = StringField(
        "Incoming server", validators=[normalised_by(validation.normalise_host)]
    )
    read_port = StringField(
        "Incoming port", validators=[normalised_by(validation.parse_port)]
    )
    read_security = SelectField(
        "Incoming security", choices=SECURITY_CHOICES, default="ssl"
    )
    read_username = StringField("Incoming user name", validators=[header_value(320)])
    read_password = PasswordField("Incoming password")
    read_folder = StringField("Folder", default="INBOX", validators=[header_value(200)])

    trusted_fingerprint = StringField(
        "Trusted certificate (SHA-256 fingerprint)",
        validators=[normalised_by(validation.normalise_fingerprint)],
    )

    def __init__(self, *args, stored_secrets: Iterable[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.preset.choices = [SelectChoice("", "Choose a provider…")] + [
            SelectChoice(preset.key, preset.label) for preset in presets.all_presets()
        ]
        # Names of secrets already stored on the account being edited.
        self.stored_secrets = set(stored_secrets)
        # Secrets typed on this request or carried over from a failed one.
        self.typed_secrets: dict[str, str] = {}
        self.warnings: dict[str, str] = {}
        self.preset_note = ""

    # -- validation in steps ------------------------------------------------

    def validate_server_settings(self, include_read: bool = True) -> bool:
        """Validate the fields a test needs; names are not needed yet."""
        names = SERVER_FIELDS + (READ_FIELDS if include_read else ())
        ok = self._run_validators(names)
        ok = self._check_required_server_fields(include_read) and ok
        self.collect_warnings()
        return ok

    def validate_read_settings(self) -> bool:
        """Validate the fields a test read needs; OAuth2 reads need the sign-in's too."""
        names = READ_FIELDS + ("trusted_fingerprint", "smtp_auth")
        if self.oauth_provider:
            names += ("smtp_username",)
        ok = self._run_validators(names)
        if not self.read_protocol.data:
            self.read_protocol.errors.append("Choose IMAP or POP3 to test reading.")
            ok = False
        ok = self._check_oauth_fields() and ok
        return self._check_required_read_fields() and ok

    def validate_all(self, include_security: bool = False) -> bool:
        """Validate every field; ``security`` only where the form shows it."""
        ok = self.validate_server_settings()
        return self.validate_names(include_security) and ok

    def _run_validators(self, names: Iterable[str]) -> bool:
        ok = True
        for name in names:
            field: Field = self[name]
            if isinstance(field.data, str):
                field.data = (
                    field.data.strip() if name != "smtp_password" else field.data
                )
            if not field.validate(self):
                ok = False
        return ok

    def _require(self, field: Field, message: str) -> bool:
        if field.data in (None, "") and not field.errors:
            field.errors.append(message)
            return False
        return True

    def _check_required_server_fields(self, include_read: bool) -> bool:
        ok = self._require(self.email_address, "Enter the account's email address.")
        ok = self._require(self.smtp_host, "Enter the SMTP server's host name.") and ok
        ok = self._require(self.smtp_port, "Enter the SMTP port, usually 587.") and ok
        ok = self._check_oauth_fields() and ok
        if self.smtp_auth.data == AUTH_PASSWORD:
            ok = (
                self._require(
                    self.smtp_username, "Enter the user name to sign in with."
                )
                and ok
            )
            if not self.has_secret("smtp_password"):
                self.smtp_password.errors.append("Enter the password to sign in with.")
                ok = False
        if include_read and self.read_protocol.data:
            ok = self._check_required_read_fields() and ok
        return ok

    def _check_oauth_fields(self) -> bool:
        """Require the user name to sign in as and a provider that is set up."""
        provider = self.oauth_provider
        if not provider or self.smtp_auth.errors:
            return True
        ok = self._require(
            self.smtp_username,
            "Enter the address to sign in as, usually the email address.",
        )
        problem = mail_oauth.setup_problem(provider)
        if problem:
            self.smtp_auth.errors.append(problem)
            ok = False
        return ok

    def _check_required_read_fields(self) -> bool:
        if not self.read_protocol.data:
            return True
        ok = self._require(
            self.read_host, "Enter the incoming mail server's host name."
        )
        ok = (
            self._require(self.read_port, "Enter the incoming mail server's port.")
            and ok
        )
        if self.oauth_provider:
            if self.read_protocol.data != "imap":
                self.read_protocol.errors.append(
                    "OAuth2 sign-in reads mail over IMAP. Choose IMAP."
                )
                return False
            # IMAP signs in with the same OAuth2 sign-in as SMTP.
            return ok
        ok = (
            self._require(self.read_username, "Enter the user name to sign in with.")
            and ok
        )
        if not self.has_secret("read_password"):
            self.read_password.errors.append("Enter the password to sign in with.")
            ok = False
        return ok

    def collect_warnings(self) -> None:
        """Note settings that are allowed but likely wrong, shown beside their fields."""
        pairs = [("smtp_port", "smtp_security", "smtp")]
        if self.read_protocol.data:
            pairs.append(("read_port", "read_security", self.read_protocol.data))
        for port_name, security_name, protocol in pairs:
            port = self[port_name].data
            if isinstance(port, int) and not self[security_name].errors:
                try:
                    warning = validation.security_port_warning(
                        port, self[security_name].data, protocol
                    )
                except ValueError:
                    # An invalid security or protocol gets its own error
                    # message; there is nothing to warn about.
                    continue
                if warning:
                    self.warnings[port_name] = warning
        provider = self.oauth_provider
        for host_name in ("smtp_host", "read_host"):
            host = self[host_name].data
            if not isinstance(host, str) or not host:
                continue
            if provider:
                warning = mail_oauth.host_warning(provider, host)
                if warning:
                    self.warnings[host_name] = warning
            elif presets.is_microsoft365_host(host):
                self.warnings[host_name] = (
                    "This host belongs to Microsoft 365, which refuses password "
                    "sign-in for SMTP, IMAP and POP, so signing in with a "
                    "password is expected to fail (SMTP answers 535 5.7.139). "
                    "Choose OAuth2: sign in with Microsoft."
                )
        if self.smtp_auth.data != AUTH_NONE and self.smtp_security.data == "none":
            self.warnings["smtp_security"] = (
                "Without encryption the password or token crosses the network in "
                "clear text. Choose STARTTLS or SSL/TLS unless the server is on a "
                "trusted network."
            )

    @property
    def oauth_provider(self) -> str | None:
        """Return "google" or "microsoft" when the form signs in with OAuth2."""
        return oauth_provider(self.smtp_auth.data)

    # -- secrets ------------------------------------------------------------

    def has_secret(self, name: str) -> bool:
        return bool(self.typed_secrets.get(name)) or name in self.stored_secrets

    def apply_preset(self, key: str) -> bool:
        """Fill the send and read settings from a provider preset.

        The read protocol already chosen is kept when the provider offers it;
        otherwise IMAP is preferred. Names, address and passwords stay as typed.
        """
        preset = presets.get_preset(key)
        if preset is None:
            self.preset.errors = ["Choose a provider from the list."]
            return False
        self.smtp_host.data = preset.smtp.host
        self.smtp_port.data = str(preset.smtp.port)
        self.smtp_security.data = str(preset.smtp.security)
        if not preset.smtp_auth_required:
            self.smtp_auth.data = AUTH_NONE
        elif not self.oauth_provider:
            self.smtp_auth.data = AUTH_PASSWORD

        servers = {"imap": preset.imap, "pop3": preset.pop3}
        protocol = self.read_protocol.data
        if not servers.get(protocol):
            protocol = "imap" if preset.imap else ("pop3" if preset.pop3 else "")
        self.read_protocol.data = protocol
        if protocol:
            server = servers[protocol]
            self.read_host.data = server.host
            self.read_port.data = str(server.port)
            self.read_security.data = str(server.security)

        if self.email_address.data:
            self.smtp_username.data = self.smtp_username.data or self.email_address.data
            if protocol:
                self.read_username.data = (
                    self.read_username.data or self.email_address.data
                )
        self.preset_note = preset.note
        return True
