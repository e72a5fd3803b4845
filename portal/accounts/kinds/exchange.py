"""The on-premises Microsoft Exchange account type: EWS settings, Autodiscover, tests.

The form takes a mailbox address, a user name and password, NTLM or Basic, and
either an EWS URL or Find automatically (Autodiscover). What Autodiscover
found (the endpoint, the authentication, the server version) travels with the
form as a sealed value until the account is saved, and is stored in the
account's settings, so later sends do not repeat Autodiscover.

One route serves every button, selected by ``action``: ``autodiscover``
(Find server, or Run again), ``allow-host`` (confirm a redirect to another
host, then run again), ``test-send``, ``test-read`` and ``save``.
"""

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from flask import current_app, render_template, request
from flask_login import current_user
from wtforms import (
    BooleanField,
    EmailField,
    PasswordField,
    RadioField,
    SelectChoice,
    SelectField,
    StringField,
)

from ... import crypto, ratelimits, validation
from ...extensions import db
from ...models import EmailAccount
from ...services import accounts as account_service
from ...services import audit, outbound, senders, testing
from ...services.messages import build_test_message
from ...templating import render_page_or_fragment, wants_fragment
from ...transports import destinations, ews
from ...transports import ews_autodiscover as autodiscover
from ...transports.base import TransportError
from .. import concurrency, pages, types
from ..forms import AccountForm, header_value, normalised_by
from ..scope import AccountScope

log = logging.getLogger(__name__)

EXCHANGE = "exchange"
LABEL = "Microsoft Exchange (on-premises)"
FORM_TEMPLATE = "accounts/exchange/_form.html"
PASSWORD = "password"  # noqa: S105 (the name of the stored secret)

AUTODISCOVER = "autodiscover"
EXPLICIT_URL = "url"


# -- the form ---------------------------------------------------------------------


def _check_username(value: str) -> str:
    domain, backslash, user = value.partition("\\")
    if backslash and domain and user and "\\" not in user:
        return value
    if not backslash and "@" in value and not value.startswith("@"):
        return value
    raise ValueError(
        "Write the user name as DOMAIN\\user or as the user principal name, "
        "such as alice@example.com."
    )


def _check_ews_url(value: str) -> str:
    value = value.strip()
    scheme, _, rest = value.partition("://")
    if scheme.lower() == "http":
        raise ValueError(
            "Enter an https:// address: the portal sends the password only over HTTPS."
        )
    if scheme.lower() != "https" or not rest or rest.startswith("/"):
        raise ValueError(
            "Enter the EWS URL, such as https://mail.example.com/EWS/Exchange.asmx."
        )
    return value


class ExchangeAccountForm(AccountForm):
    email_address = EmailField(
        "Mailbox address", validators=[normalised_by(validation.normalise_email)]
    )
    username = StringField(
        "User name", validators=[header_value(320), normalised_by(_check_username)]
    )
    password = PasswordField("Password")
    authentication = SelectField(
        "Authentication",
        choices=[
            SelectChoice("ntlm", "NTLM (Windows authentication)"),
            SelectChoice("basic", "Basic"),
        ],
        default="ntlm",
    )
    server_mode = RadioField(
        "Exchange server",
        choices=[
            SelectChoice(AUTODISCOVER, "Find automatically (Autodiscover)"),
            SelectChoice(EXPLICIT_URL, "Enter the EWS URL"),
        ],
        default=AUTODISCOVER,
    )
    ews_url = StringField("EWS URL", validators=[normalised_by(_check_ews_url)])
    keep_on_premises = BooleanField("Keep on premises", default=True)
    from_address = EmailField(
        "Send from another address",
        validators=[normalised_by(validation.normalise_email)],
    )
    from_mode = RadioField(
        "Recipients see",
        choices=[
            SelectChoice(str(ews.FromMode.SEND_AS), "Send As: only that address"),
            SelectChoice(
                str(ews.FromMode.ON_BEHALF),
                "Send on Behalf: the mailbox on behalf of that address",
            ),
        ],
        default=str(ews.FromMode.SEND_AS),
    )
    trusted_fingerprint = StringField(
        "Trusted certificate (SHA-256 fingerprint)",
        validators=[normalised_by(validation.normalise_fingerprint)],
    )

    SERVER_FIELDS = (
        "email_address",
        "username",
        "password",
        "authentication",
        "server_mode",
        "ews_url",
        "keep_on_premises",
        "from_address",
        "from_mode",
        "trusted_fingerprint",
    )

    def __init__(self, *args, stored_secrets: Iterable[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.stored_secrets = set(stored_secrets)
        self.typed_secrets: dict[str, str] = {}

    def has_password(self) -> bool:
        return bool(self.typed_secrets.get(PASSWORD)) or PASSWORD in self.stored_secrets

    def validate_server(self) -> bool:
        """Validate the connection settings; a test or Autodiscover needs nothing more."""
        ok = True
        for name in self.SERVER_FIELDS:
            field = self[name]
            if isinstance(field.data, str) and name != "password":
                field.data = field.data.strip()
            if not field.validate(self):
                ok = False
        ok = self._require(self.email_address, "Enter the mailbox address.") and ok
        ok = self._require(self.username, "Enter the user name to sign in with.") and ok
        if not self.has_password():
            self.password.errors.append("Enter the password to sign in with.")
            ok = False
        if self.server_mode.data == EXPLICIT_URL:
            ok = self._require(self.ews_url, "Enter the EWS URL.") and ok
        if (
            self.from_address.data
            and self.from_address.data == self.email_address.data
            and not self.from_address.errors
        ):
            self.from_address.errors.append(
                "This is the mailbox's own address. Leave the field blank to send "
                "from it."
            )
            ok = False
        return ok

    def validate_all(self, include_security: bool) -> bool:
        ok = self.validate_server()
        return self.validate_names(include_security) and ok

    def _require(self, field, message: str) -> bool:
        if field.data in (None, "") and not field.errors:
            field.errors.append(message)
            return False
        return True


# -- stored settings ----------------------------------------------------------------


def _form_data(account: EmailAccount) -> dict:
    settings = account.settings or {}
    return {
        "email_address": account.email_address,
        "from_name": account.from_name,
        "friendly_name": account.friendly_name,
        "description": account.description,
        "enabled": account.enabled,
        "username": settings.get("username", ""),
        "authentication": settings.get("authentication", "ntlm"),
        "server_mode": settings.get("server_mode", AUTODISCOVER),
        "ews_url": settings.get("ews_url", ""),
        "keep_on_premises": settings.get("keep_on_premises", True),
        "from_address": settings.get("from_address", ""),
        "from_mode": settings.get("from_mode") or str(ews.FromMode.SEND_AS),
        "trusted_fingerprint": settings.get("trusted_fingerprint", ""),
    }


def _tls_policy(trusted_fingerprint: str) -> ews.TlsPolicy:
    return ews.TlsPolicy(
        trusted_fingerprint=trusted_fingerprint or "",
        cafile=current_app.config.get("EXCHANGE_CA_FILE"),
    )


def _connection_settings(
    *,
    ews_url: str,
    mailbox: str,
    username: str,
    password: str,
    authentication: str,
    server_version: str,
    from_address: str,
    from_mode: str,
    trusted_fingerprint: str,
) -> ews.ExchangeSettings:
    config = current_app.config
    return ews.ExchangeSettings(
        ews_url=ews_url,
        mailbox=mailbox,
        username=username,
        password=password,
        authentication=ews.Authentication(authentication),
        server_version=server_version,
        from_address=from_address or "",
        from_mode=ews.FromMode(from_mode or ews.FromMode.SEND_AS),
        tls=_tls_policy(trusted_fingerprint),
        timeout=config["EXCHANGE_TIMEOUT"],
        busy_retries=config["EXCHANGE_BUSY_RETRIES"],
        max_back_off=config["EXCHANGE_MAX_BACK_OFF"],
    )


def stored_settings(account: EmailAccount) -> ews.ExchangeSettings:
    """Connection settings of a saved account, for the delivery worker."""
    settings = account.settings or {}
    if settings.get("server_mode") == EXPLICIT_URL:
        ews_url = settings.get("ews_url", "")
        authentication = settings.get("authentication", "ntlm")
        version = settings.get("server_version", "")
    else:
        found = settings.get("autodiscover") or {}
        ews_url = found.get("ews_url", "")
        authentication = found.get("authentication") or settings.get(
            "authentication", "ntlm"
        )
        version = found.get("server_version", "")
    return _connection_settings(
        ews_url=ews_url,
        mailbox=account.email_address,
        username=settings.get("username", ""),
        password=account_service.get_secret(account, PASSWORD),
        authentication=authentication,
        server_version=version,
        from_address=settings.get("from_address", ""),
        from_mode=settings.get("from_mode", ""),
        trusted_fingerprint=settings.get("trusted_fingerprint", ""),
    )


def _open_ews(account: EmailAccount, timeout: float) -> ews.EwsConnection:
    return ews.EwsConnection(stored_settings(account))


senders.register(EXCHANGE, _open_ews)


# -- the view ---------------------------------------------------------------------------


class _State:
    """The form's state besides its fields: the password and Autodiscover's result."""

    def __init__(self, form: ExchangeAccountForm, account: EmailAccount | None):
        self.form = form
        self.account = account
        self.discovery: autodiscover.Discovery | None = None
        self.found_at = ""
        self.allowed_hosts: list[str] = []
        self.problem: autodiscover.AutodiscoverFailed | None = None
        self.confirmation: autodiscover.RedirectNeedsConfirmation | None = None
        self.just_ran = False

    def load_stored(self) -> None:
        settings = (self.account.settings or {}) if self.account else {}
        found = settings.get("autodiscover")
        if found:
            self.discovery = autodiscover.Discovery.from_dict(found)
            self.found_at = found.get("found_at", "")
            self.allowed_hosts = list(found.get("allowed_hosts", []))

    def load_posted(self) -> None:
        """Read the sealed result and the allowed hosts, else use the stored ones."""
        self.load_stored()
        posted_hosts = [host for host in request.form.getlist("allowed_host") if host]
        if posted_hosts:
            self.allowed_hosts = posted_hosts
        sealed = request.form.get("discovery_sealed", "")
        value = crypto.unseal(sealed, current_user.id) if sealed else None
        if value:
            values = json.loads(value)
            self.discovery = autodiscover.Discovery.from_dict(values)
            self.found_at = values.get("found_at", "")

    def current_discovery(self) -> autodiscover.Discovery | None:
        """Return the result for the address on the form, or None if it was for another."""
        found = self.discovery
        if found is None or self.form.server_mode.data != AUTODISCOVER:
            return None
        typed = (self.form.email_address.data or "").lower()
        if typed and typed not in (found.for_address.lower(), found.address.lower()):
            return None
        return found

    def sealed_discovery(self) -> str:
        if self.discovery is None:
            return ""
        values = self.discovery.to_dict()
        values["found_at"] = self.found_at
        return crypto.seal(json.dumps(values), current_user.id)


def exchange_account_view(scope: AccountScope, account: EmailAccount | None):
    """Show, test, run Autodiscover for, or save the Exchange account form."""
    stored = account.secret_names() if account else set()
    if request.method == "GET":
        form = ExchangeAccountForm(
            data=_form_data(account) if account else {}, stored_secrets=stored
        )
        form.test_to.data = form.test_to.data or current_user.email
        state = _State(form, account)
        state.load_stored()
        return _render_form(
            scope, state, stamp_values=_form_data(account) if account else None
        )

    form = ExchangeAccountForm(stored_secrets=stored)
    _collect_password(form)
    state = _State(form, account)
    state.load_posted()
    action = request.form.get("action", "save")

    if action in (AUTODISCOVER, "allow-host"):
        return _run_autodiscover(scope, state, action)
    if action in ("test-send", "test-read"):
        return _run_test(scope, state, action)
    return _save(scope, state)


def _collect_password(form: ExchangeAccountForm) -> None:
    """Take the password from its field, or from the sealed copy of a failed step."""
    if form.password.data:
        form.typed_secrets[PASSWORD] = form.password.data
        return
    sealed = request.form.get("password_sealed", "")
    if sealed:
        value = crypto.unseal(sealed, current_user.id)
        if value:
            form.typed_secrets[PASSWORD] = value


def _password(state: _State) -> str:
    typed = state.form.typed_secrets.get(PASSWORD)
    if typed:
        return typed
    return account_service.get_secret(state.account, PASSWORD) if state.account else ""


def _invalid(scope: AccountScope, state: _State, message: str):
    """Return the whole form with its field errors, retargeted for htmx."""
    return pages.form_with_errors(
        state.form, lambda: _render_form(scope, state), message
    )


def _outbound_policy(scope: AccountScope):
    """Apply the outbound connection policy of this kind of account to the block."""
    return destinations.guarded(
        outbound.guard_for(scope.personal, outbound.load_policy())
    )


def _rate_key(state: _State) -> str:
    if state.account is not None:
        return str(state.account.id)
    return f"new:{state.form.email_address.data}"


# -- Autodiscover -------------------------------------------------------------------------


def _run_autodiscover(scope: AccountScope, state: _State, action: str):
    form = state.form
    form.server_mode.data = AUTODISCOVER
    if not form.validate_server():
        return _invalid(
            scope, state, "Autodiscover did not run. Correct the fields marked below."
        )
    if action == "allow-host":
        host = request.form.get("allow_host", "").strip().lower()
        if host and host not in state.allowed_hosts:
            state.allowed_hosts.append(host)
            log.info(
                "Staff member %s allowed Autodiscover redirects to %s for account %s",
                current_user.id,
                host,
                state.account.id if state.account else None,
            )

    ratelimits.consume_test(current_user.id, _rate_key(state))
    with _outbound_policy(scope):
        _discover(state)
    _audit_discovery(state)
    db.session.commit()

    if wants_fragment():
        return render_template(
            "accounts/exchange/_server.html", **_server_context(scope, state)
        )
    return _render_form(scope, state)


def _discover(state: _State) -> bool:
    """Run Autodiscover with the form's values; True when an endpoint was found."""
    form = state.form
    config = current_app.config
    state.just_ran = True
    state.discovery = None
    # Read everything that needs the app or the database here: the search
    # runs on a worker thread.
    arguments = {
        "username": form.username.data,
        "password": _password(state),
        "authentication": ews.Authentication(form.authentication.data),
        "candidates": autodiscover.parse_candidates(config["EXCHANGE_AUTODISCOVER"]),
        "keep_on_premises": bool(form.keep_on_premises.data),
        "allowed_hosts": set(state.allowed_hosts),
        "tls_policy": _tls_policy(form.trusted_fingerprint.data),
        "timeout": config["EXCHANGE_TIMEOUT"],
    }
    address = form.email_address.data
    try:
        found = ews.run_with_deadline(
            lambda: autodiscover.discover(address, **arguments),
            _deadline_settings(form),
            "running Autodiscover",
        )
    except autodiscover.RedirectNeedsConfirmation as confirmation:
        state.confirmation = confirmation
        return False
    except autodiscover.AutodiscoverFailed as failure:
        state.problem = failure
        return False
    except TransportError as error:  # the deadline passed
        state.problem = autodiscover.AutodiscoverFailed(error.summary, error.advice, [])
        return False

    state.discovery = found
    state.found_at = datetime.now(UTC).isoformat(timespec="seconds")
    if found.authentication != form.authentication.data:
        form.authentication.data = str(found.authentication)
    return True


def _deadline_settings(form: ExchangeAccountForm) -> ews.ExchangeSettings:
    """Settings whose deadline bounds a whole Autodiscover run."""
    config = current_app.config
    candidates = autodiscover.parse_candidates(config["EXCHANGE_AUTODISCOVER"])
    domain = (form.email_address.data or "").rpartition("@")[2]
    return ews.ExchangeSettings(
        ews_url=f"https://{domain}/autodiscover",
        mailbox=form.email_address.data or "",
        username="",
        password="",
        timeout=config["EXCHANGE_TIMEOUT"] * (len(candidates) + 2),
        busy_retries=0,
    )


def _audit_discovery(state: _State) -> None:
    if state.discovery is not None:
        outcome, detail = audit.SUCCESS, f"Found {state.discovery.ews_url}"
    elif state.confirmation is not None:
        outcome = audit.FAILURE
        detail = f"Stopped at a redirect to {state.confirmation.target}"
    else:
        outcome = audit.FAILURE
        detail = state.problem.summary if state.problem else ""
    audit.record(
        "account.autodiscover",
        object_type="account",
        object_id=state.account.id if state.account else "",
        label=state.account.friendly_name
        if state.account
        else state.form.email_address.data,
        outcome=outcome,
        detail=detail,
    )


def _ensure_endpoint(state: _State) -> str | None:
    """Return the EWS URL to use, running Autodiscover first when needed."""
    form = state.form
    if form.server_mode.data == EXPLICIT_URL:
        return form.ews_url.data
    found = state.current_discovery()
    if found is None and _discover(state):
        found = state.discovery
    return found.ews_url if found else None


def _form_settings(state: _State, ews_url: str) -> ews.ExchangeSettings:
    form = state.form
    found = state.current_discovery()
    authentication = form.authentication.data
    version = ""
    if found is not None:
        authentication = str(found.authentication)
        version = found.server_version
    return _connection_settings(
        ews_url=ews_url,
        mailbox=form.email_address.data,
        username=form.username.data,
        password=_password(state),
        authentication=authentication,
        server_version=version,
        from_address=form.from_address.data or "",
        from_mode=form.from_mode.data,
        trusted_fingerprint=form.trusted_fingerprint.data or "",
    )


# -- tests ------------------------------------------------------------------------------


def _run_test(scope: AccountScope, state: _State, action: str):
    form = state.form
    valid = form.validate_server()
    if action == "test-send":
        valid = form.validate_test_destination() and valid
    if not valid:
        return _invalid(scope, state, pages.TEST_NOT_RUN)

    ratelimits.consume_test(current_user.id, _rate_key(state))
    kind = testing.SEND if action == "test-send" else testing.READ
    with _outbound_policy(scope):
        ews_url = _ensure_endpoint(state)
        if ews_url is None:
            outcome = _autodiscover_outcome(kind, state)
        elif kind == testing.SEND:
            outcome = _test_send(state, _form_settings(state, ews_url))
        else:
            outcome = _test_read(state, _form_settings(state, ews_url))

    if state.account is not None:
        testing.record_outcome(state.account, outcome)
    testing.audit_outcome(outcome, state.account, label=form.email_address.data)
    if state.just_ran:
        _audit_discovery(state)
    db.session.commit()

    if wants_fragment():
        return render_template(
            "accounts/exchange/_test_result.html",
            outcome=outcome,
            refresh_server=state.just_ran,
            **_server_context(scope, state),
        )
    return _render_form(scope, state, outcome=outcome)


def _autodiscover_outcome(kind: str, state: _State) -> testing.TestOutcome:
    if state.confirmation is not None:
        return testing.TestOutcome(
            kind=kind,
            ok=False,
            step="autodiscover",
            summary=(
                f"Autodiscover was redirected to {state.confirmation.target}, "
                "another host, and stopped there."
            ),
            advice=(
                "Check the redirect under Exchange server above and allow it if "
                "you trust that host, or enter the EWS URL."
            ),
        )
    failure = state.problem
    return testing.TestOutcome(
        kind=kind,
        ok=False,
        step=failure.step if failure else "autodiscover",
        summary=failure.summary if failure else "Autodiscover found nothing.",
        advice=failure.advice if failure else "",
        certificate=failure.certificate if failure else None,
    )


def _test_send(state: _State, settings: ews.ExchangeSettings) -> testing.TestOutcome:
    form = state.form
    account_id = state.account.id if state.account else None
    message = build_test_message(
        from_address=form.email_address.data,
        from_name=form.from_name.data or "",
        to=form.test_to.data,
        account_label=form.friendly_name.data or form.email_address.data,
    )
    log.info(
        "Test send started for account %s via EWS %s", account_id, settings.ews_url
    )
    try:
        result = ews.send_message(settings, message)
    except TransportError as error:
        log.info(
            "Test send failed for account %s at step %s: %s",
            account_id,
            error.step,
            error.summary,
        )
        return testing.failed_outcome(testing.SEND, error)

    if not settings.from_address:
        sent_as = f"from {settings.mailbox}"
    elif settings.from_mode == ews.FromMode.SEND_AS:
        sent_as = f"as {settings.from_address} (Send As)"
    else:
        sent_as = f"from {settings.mailbox} on behalf of {settings.from_address}"
    return testing.TestOutcome(
        kind=testing.SEND,
        ok=True,
        summary=f"Exchange accepted the test message for {form.test_to.data}, sent {sent_as}.",
        reply=result.reply,
    )


def _test_read(state: _State, settings: ews.ExchangeSettings) -> testing.TestOutcome:
    account_id = state.account.id if state.account else None
    log.info(
        "Test read started for account %s via EWS %s", account_id, settings.ews_url
    )
    try:
        result = ews.count_inbox(settings)
    except TransportError as error:
        log.info(
            "Test read failed for account %s at step %s: %s",
            account_id,
            error.step,
            error.summary,
        )
        return testing.failed_outcome(testing.READ, error)
    count = result.message_count
    noun = "message" if count == 1 else "messages"
    return testing.TestOutcome(
        kind=testing.READ,
        ok=True,
        summary=(
            f"Signed in and opened the inbox of {settings.mailbox}: {count} {noun}, "
            f"{result.unread_count} unread."
        ),
    )


# -- saving ------------------------------------------------------------------------------


def _save(scope: AccountScope, state: _State):
    form = state.form
    account = state.account
    if not form.validate_all(include_security=scope.chooses_security(account)):
        return _invalid(
            scope, state, "The account was not saved. Correct the fields marked below."
        )
    if account is not None:
        stored_values = _form_data(account)
        if concurrency.reject_if_stale(account, form, stored_values):
            return _render_form(scope, state, stamp_values=stored_values)

    if form.server_mode.data == AUTODISCOVER and state.current_discovery() is None:
        ratelimits.consume_test(current_user.id, _rate_key(state))
        with _outbound_policy(scope):
            found = _discover(state)
        _audit_discovery(state)
        db.session.commit()
        if not found:
            form.form_errors.append(
                "The account was not saved: Autodiscover found no Exchange server. "
                "See Exchange server below, or enter the EWS URL."
            )
            return _render_form(scope, state)

    created = account is None
    before = None if created else account_service.snapshot(account)
    try:
        account = _store(form, state, account, scope)
    except account_service.AccountError as error:
        form[error.field].errors.append(str(error))
        return _render_form(scope, state)
    changed = [PASSWORD] if form.typed_secrets.get(PASSWORD) else []
    account_service.record_saved(account, before, changed)
    db.session.commit()

    return pages.saved_response(scope, account, created)


def _store(
    form: ExchangeAccountForm,
    state: _State,
    account: EmailAccount | None,
    scope: AccountScope,
) -> EmailAccount:
    """Create or update the account from a validated form; the caller commits."""
    owner_id = scope.owner_id()
    name = form.friendly_name.data
    if account_service.friendly_name_taken(
        owner_id, name, account.id if account else None
    ):
        where = "your accounts" if owner_id else "the global accounts"
        raise account_service.AccountError(
            f"Another account among {where} is already named {name!r}. Choose another name.",
            field="friendly_name",
        )

    security = form.security.data if scope.chooses_security(account) else None
    if account is None:
        account = EmailAccount(account_type=EXCHANGE, owner_id=owner_id)
        db.session.add(account)
    else:
        account.version += 1

    settings = {
        "username": form.username.data,
        "authentication": form.authentication.data,
        "server_mode": form.server_mode.data,
        "ews_url": form.ews_url.data if form.server_mode.data == EXPLICIT_URL else "",
        "keep_on_premises": bool(form.keep_on_premises.data),
        "from_address": form.from_address.data or "",
        "from_mode": form.from_mode.data if form.from_address.data else "",
        "trusted_fingerprint": form.trusted_fingerprint.data or "",
    }
    found = state.current_discovery()
    if found is not None:
        stored = found.to_dict()
        del stored["attempts"]  # shown after a run, not kept
        stored["found_at"] = state.found_at
        stored["allowed_hosts"] = list(state.allowed_hosts)
        settings["autodiscover"] = stored

    account.friendly_name = name
    account.description = form.description.data or ""
    account.email_address = form.email_address.data
    account.from_name = form.from_name.data or ""
    account.enabled = bool(form.enabled.data)
    account.settings = settings
    if security is not None:
        account.security = security
    if form.typed_secrets.get(PASSWORD):
        account_service.set_secret(account, PASSWORD, form.typed_secrets[PASSWORD])
    return account


# -- rendering ---------------------------------------------------------------------------


def _action_url(scope: AccountScope, account: EmailAccount | None) -> str:
    if account is None:
        return scope.url("create_account", type_key=EXCHANGE)
    return scope.url("edit_account", account_id=account.id)


def _server_context(scope: AccountScope, state: _State) -> dict:
    found = state.current_discovery() if state.discovery else None
    return {
        "form": state.form,
        "action_url": _action_url(scope, state.account),
        "discovery": found,
        "found_at": state.found_at,
        "version_name": ews.describe_version(found.server_version) if found else "",
        "authentication_labels": ews.AUTHENTICATION_LABELS,
        "problem": state.problem,
        "confirmation": state.confirmation,
        "just_ran": state.just_ran,
        "allowed_hosts": state.allowed_hosts,
        "sealed_discovery": state.sealed_discovery() if found else "",
    }


def _render_form(
    scope: AccountScope,
    state: _State,
    outcome=None,
    stamp_values: dict | None = None,
):
    account = state.account
    form = state.form
    sealed_password = ""
    if form.typed_secrets.get(PASSWORD):
        sealed_password = crypto.seal(form.typed_secrets[PASSWORD], current_user.id)
    # Both name the same action_url; the server panel's context also serves
    # the fragments that replace that panel alone.
    context = {
        **pages.page_context(scope, account, EXCHANGE, LABEL),
        **_server_context(scope, state),
    }
    return render_page_or_fragment(
        "accounts/edit_account.html",
        FORM_TEMPLATE,
        form_template=FORM_TEMPLATE,
        type_label=LABEL,
        **context,
        scope=scope,
        sealed_password=sealed_password,
        **concurrency.form_fields(account, stamp_values),
        choose_security=scope.chooses_security(account),
        outcome=outcome,
        breadcrumbs=scope.breadcrumbs((context["title"], None)),
    )


def _summary(account: EmailAccount) -> str:
    settings = account.settings or {}
    if settings.get("server_mode") == EXPLICIT_URL:
        return "Exchange (EWS)"
    return "Exchange (EWS, Autodiscover)"


types.register(
    types.AccountType(
        key=EXCHANGE,
        label=LABEL,
        description=(
            "A mailbox on your organisation's own Exchange server, reached through "
            "Exchange Web Services with a Windows user name and password. Mailboxes "
            "in Exchange Online use the Microsoft 365 type."
        ),
        view=exchange_account_view,
        summary=_summary,
        order=30,
    )
)
