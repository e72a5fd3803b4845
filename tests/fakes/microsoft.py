"""A local fake of the Microsoft identity platform and Microsoft Graph.

Served over HTTP on 127.0.0.1 by the tests, it covers what the portal uses:

- the v2.0 token endpoint: client credentials (scope ``{resource}/.default``
  for a Graph resource, a JWT whose ``roles`` are the permissions granted by
  admin consent), the authorization code grant with PKCE (S256 checked, codes
  single use, the redirect URI must match), and refresh tokens, which rotate:
  each refresh returns a new refresh token and the old one stops working.
  Delegated tokens are for Graph, or for Exchange Online
  (``https://outlook.office.com``, whose ``SMTP.Send`` and
  ``IMAP.AccessAsUser.All`` scopes XOAUTH2 sign-in needs) when the requested
  scopes name that resource. When ``openid`` is requested, the response also
  carries a v2.0 ID token (``preferred_username``, with ``name`` for
  ``profile`` and ``email`` for ``email``);
- the authorize endpoint, which "signs in" a user (``sign_in_as``, or the
  ``login_hint``) and redirects back with a code, as the sign-in page does;
- the admin consent endpoint, which grants the registration's application
  permissions and redirects back with ``admin_consent=True``;
- client errors with the identity platform's JSON body and AADSTS codes:
  unknown tenant (90002), unknown application (700016), expired secret
  (7000222), invalid secret (7000215), missing consent (65001), a revoked or
  expired grant (50173, 700082), a reused code (54005), a PKCE mismatch
  (501481);
- Graph v1.0: ``GET /users`` with ``$filter`` (``startswith`` and ``eq``
  joined by ``or``), ``$select``, ``$top`` and ``@odata.nextLink`` paging;
  ``GET /users/{id}``, ``GET /me``; ``POST .../sendMail`` in JSON and MIME
  form, answering 202; ``GET .../mailFolders/inbox``. Errors have Graph's JSON
  shape: InvalidAuthenticationToken (401), Authorization_RequestDenied and
  ErrorAccessDenied (403), ErrorInvalidUser, Request_ResourceNotFound and
  MailboxNotEnabledForRESTAPI (404), ErrorSendAsDenied (403), and throttling
  (429 or 503 with Retry-After), including Outlook's limit of four
  concurrent requests per mailbox.

Tokens are JWTs signed with a key only this fake knows; Graph checks their
signature, audience (a Graph resource) and lifetime. ``check_access_token``
makes the same checks in the test's own process for any resource, as the
XOAUTH2 test servers need. ``expire_tokens`` makes every token issued so far
expired, ``throttle`` scripts throttling responses, ``revoke_consent``
withdraws the permissions.
"""

import base64
import email
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.utils import getaddresses
from urllib.parse import urlencode

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
TENANT_DOMAIN = "contoso.onmicrosoft.com"
CLIENT_ID = "00001111-aaaa-2222-bbbb-3333cccc4444"
CLIENT_SECRET = "fake~client~secret~value"
GRAPH_RESOURCES = (
    "https://graph.microsoft.com",
    "https://graph.microsoft.us",
    "https://microsoftgraph.chinacloudapi.cn",
)
# Exchange Online, the audience of tokens for IMAP, POP and SMTP sign-in.
OUTLOOK_RESOURCE = "https://outlook.office.com"
# Every audience a delegated access token can have. Graph is the default.
RESOURCES = (*GRAPH_RESOURCES, OUTLOOK_RESOURCE)
ID_TOKEN_ISSUER = f"https://login.microsoftonline.com/{TENANT_ID}/v2.0"
OIDC_SCOPES = ("openid", "profile", "email", "offline_access")
APPLICATION_PERMISSIONS = ("User.Read.All", "Mail.Send", "Mail.ReadWrite")
MAILBOX_CONCURRENCY = 4
USER_PROPERTIES = {
    "id": "id",
    "displayName": "display_name",
    "mail": "mail",
    "userPrincipalName": "upn",
    "accountEnabled": "account_enabled",
    "proxyAddresses": "proxy_addresses",
}


@dataclass
class FakeUser:
    id: str
    display_name: str
    upn: str
    mail: str | None
    account_enabled: bool = True
    has_mailbox: bool = True  # False: MailboxNotEnabledForRESTAPI
    inbox_total: int = 0
    inbox_unread: int = 0
    # Other addresses this mailbox has Send As or Send on Behalf on.
    send_as: set[str] = field(default_factory=set)
    proxy_addresses: list[str] = field(default_factory=list)

    def addresses(self) -> set[str]:
        found = {self.upn.lower()}
        if self.mail:
            found.add(self.mail.lower())
        for proxy in self.proxy_addresses:
            kind, _, value = proxy.partition(":")
            if kind.lower() == "smtp":
                found.add(value.lower())
        return found

    def as_json(self, select: list[str] | None = None) -> dict:
        names = select or ["id", "displayName", "mail", "userPrincipalName"]
        return {
            name: getattr(self, USER_PROPERTIES[name])
            for name in names
            if name in USER_PROPERTIES
        }


@dataclass
class FakeApp:
    """An app registration and its service principal in the tenant."""

    client_id: str = CLIENT_ID
    secret: str = CLIENT_SECRET
    secret_expired: bool = False
    # Application permissions configured on the registration; admin consent
    # grants them.
    configured: set[str] = field(default_factory=lambda: set(APPLICATION_PERMISSIONS))
    granted: set[str] = field(default_factory=set)
    delegated_consent: bool = False
    redirect_uris: set[str] | None = None  # None accepts any


@dataclass
class Throttle:
    status: int
    times: int
    retry_after: str | None
    path_contains: str
    code: str


def default_users() -> list[FakeUser]:
    users = [
        FakeUser(
            "a1b2c3d4-0000-4000-8000-000000000001",
            "Alice Archer",
            "alice@contoso.com",
            "alice@contoso.com",
            inbox_total=12,
            inbox_unread=3,
            proxy_addresses=["SMTP:alice@contoso.com", "smtp:a.archer@contoso.com"],
        ),
        FakeUser(
            "a1b2c3d4-0000-4000-8000-000000000002",
            "Bob Baker",
            "bob@contoso.com",
            "bob@contoso.com",
        ),
        FakeUser(
            "a1b2c3d4-0000-4000-8000-000000000003",
            "Helpdesk",
            "helpdesk@contoso.com",
            "helpdesk@contoso.com",
            account_enabled=False,
            inbox_total=57,
            inbox_unread=9,
            send_as={"support@contoso.com"},
        ),
        FakeUser(
            "a1b2c3d4-0000-4000-8000-000000000004",
            "On-premises Olga",
            "olga@contoso.com",
            "olga@contoso.com",
            has_mailbox=False,
        ),
        FakeUser(
            "a1b2c3d4-0000-4000-8000-000000000005",
            "Guest Gary",
            "gary@contoso.onmicrosoft.com",
            None,
            has_mailbox=False,
        ),
    ]
    for number in range(1, 26):
        users.append(
            FakeUser(
                f"a1b2c3d4-0000-4000-8000-1000000000{number:02d}",
                f"Agent {number:02d}",
                f"agent{number:02d}@contoso.com",
                f"agent{number:02d}@contoso.com",
            )
        )
    return users


class MicrosoftFake:
    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._server = None
        self._thread = None
        self.url = ""
        self._map = Map(
            [
                Rule("/<tenant>/oauth2/v2.0/token", endpoint="token", methods=["POST"]),
                Rule(
                    "/<tenant>/oauth2/v2.0/authorize",
                    endpoint="authorize",
                    methods=["GET"],
                ),
                Rule(
                    "/<tenant>/v2.0/adminconsent",
                    endpoint="admin_consent",
                    methods=["GET"],
                ),
                Rule("/v1.0/users", endpoint="list_users", methods=["GET"]),
                Rule("/v1.0/users/<user>", endpoint="get_user", methods=["GET"]),
                Rule("/v1.0/me", endpoint="get_me", methods=["GET"]),
                Rule(
                    "/v1.0/users/<user>/sendMail",
                    endpoint="send_mail",
                    methods=["POST"],
                ),
                Rule("/v1.0/me/sendMail", endpoint="send_mail", methods=["POST"]),
                Rule(
                    "/v1.0/users/<user>/mailFolders/<folder>",
                    endpoint="mail_folder",
                    methods=["GET"],
                ),
                Rule(
                    "/v1.0/me/mailFolders/<folder>",
                    endpoint="mail_folder",
                    methods=["GET"],
                ),
            ]
        )
        self.reset()

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> "MicrosoftFake":
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._thread.join()
            self._server.server_close()

    def reset(self) -> None:
        """Back to a tenant with users, an app without consent, and no records."""
        with self._lock:
            self.users = default_users()
            self.apps = {CLIENT_ID: FakeApp()}
            self.codes: dict[str, dict] = {}
            # refresh token -> {user, client, state: "valid" | "used" | "revoked" | "expired"}
            self.refresh_tokens: dict[str, dict] = {}
            self.throttles: list[Throttle] = []
            self.tokens_valid_after = 0.0
            self.token_lifetime = 3599
            self.sign_in_as: str | None = None
            self.consent_answer: str | None = None  # an error such as access_denied
            self.send_delay = 0.0
            self.token_requests: list[dict] = []
            self.graph_requests: list[dict] = []
            self.sent: list[dict] = []
            self.consents: list[dict] = []
            self.issued: list[str] = []  # every access and refresh token handed out
            self.in_flight: dict[str, int] = {}
            self.max_in_flight: dict[str, int] = {}

    # -- scenario helpers -------------------------------------------------------

    @property
    def app(self) -> FakeApp:
        return self.apps[CLIENT_ID]

    def grant_consent(self) -> None:
        """What an administrator's Grant admin consent does in the tenant."""
        self.app.granted = set(self.app.configured)
        self.app.delegated_consent = True

    def revoke_consent(self) -> None:
        self.app.granted = set()
        self.app.delegated_consent = False

    def revoke_sign_ins(self, upn: str) -> None:
        """Revoke every refresh token of a user, as "Revoke sessions" does."""
        user = self.user(upn)
        for token in self.refresh_tokens.values():
            if token["user"] == user.id and token["state"] == "valid":
                token["state"] = "revoked"

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired."""
        time.sleep(0.01)
        self.tokens_valid_after = time.time()

    def check_access_token(self, token: str) -> dict | None:
        """Return the claims of an unexpired access token this fake signed, else None.

        ID tokens are rejected, because their audience is the client id and
        not a resource.
        """
        claims = self._verify(token)
        if claims is None or self._expired(claims):
            return None
        if claims.get("aud") not in RESOURCES:
            return None
        return claims

    def throttle(
        self,
        *,
        status: int = 429,
        times: int = 1,
        retry_after: str | None = "1",
        path_contains: str = "",
        code: str = "",
    ) -> None:
        """Answer the next ``times`` matching Graph requests with ``status``."""
        code = code or ("TooManyRequests" if status == 429 else "ServiceUnavailable")
        self.throttles.append(Throttle(status, times, retry_after, path_contains, code))

    def user(self, key: str) -> FakeUser | None:
        key = key.lower()
        for user in self.users:
            if key in (user.id.lower(), user.upn.lower()):
                return user
        return None

    def token_count(self, grant_type: str) -> int:
        return sum(
            1 for request in self.token_requests if request["grant_type"] == grant_type
        )

    # -- WSGI -------------------------------------------------------------------

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        adapter = self._map.bind_to_environ(environ)
        try:
            endpoint, values = adapter.match()
            if endpoint in ("token", "authorize", "admin_consent"):
                response = getattr(self, f"_{endpoint}")(request, **values)
            else:
                response = self._graph(request, endpoint, values)
        except HTTPException as error:
            response = self._graph_error(
                error.code or 500, "BadRequest", error.description or ""
            )
        return response(environ, start_response)

    # -- the identity platform --------------------------------------------------

    def _aad_error(self, status: int, error: str, code: int, text: str) -> Response:
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": error,
            "error_description": f"AADSTS{code}: {text} Trace ID: {trace} "
            f"Correlation ID: {correlation} Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"{self.url}/error?code={code}",
        }
        return Response(
            json.dumps(body),
            status=status,
            content_type="application/json; charset=utf-8",
        )

    def _tenant_known(self, tenant: str) -> bool:
        return tenant.lower() in (TENANT_ID, TENANT_DOMAIN)

    def _token(self, request: Request, tenant: str) -> Response:
        form = request.form
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if request.authorization and request.authorization.type == "basic":
            client_id = request.authorization.username or client_id
            secret = request.authorization.password or secret
        grant_type = form.get("grant_type", "")
        with self._lock:
            self.token_requests.append(
                {
                    "grant_type": grant_type,
                    "client_id": client_id,
                    "scope": form.get("scope", ""),
                }
            )

        if not self._tenant_known(tenant):
            return self._aad_error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.",
            )
        app = self.apps.get(client_id)
        if app is None:
            return self._aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{TENANT_DOMAIN}'.",
            )
        if not secret:
            return self._aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        if app.secret_expired:
            return self._aad_error(
                401,
                "invalid_client",
                7000222,
                f"The provided client secret keys for app '{client_id}' are expired.",
            )
        if not hmac.compare_digest(secret, app.secret):
            return self._aad_error(
                401, "invalid_client", 7000215, "Invalid client secret provided."
            )

        if grant_type == "client_credentials":
            return self._client_credentials(app, form.get("scope", ""))
        if grant_type == "authorization_code":
            return self._redeem_code(app, form)
        if grant_type == "refresh_token":
            return self._refresh(app, form)
        return self._aad_error(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )

    def _client_credentials(self, app: FakeApp, scope: str) -> Response:
        resource = scope.removesuffix("/.default")
        if not scope.endswith("/.default") or resource not in GRAPH_RESOURCES:
            return self._aad_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier.",
            )
        claims = {
            "aud": resource,
            "appid": app.client_id,
            "idtyp": "app",
            "oid": "5e7a0b1c-0000-4000-8000-00000000aaaa",
            "roles": sorted(app.granted),
        }
        return self._token_response({"access_token": self._jwt(claims)})

    def _redeem_code(self, app: FakeApp, form) -> Response:
        code = self.codes.get(form.get("code", ""))
        if code is None or code["client_id"] != app.client_id:
            return self._aad_error(
                400,
                "invalid_grant",
                9002313,
                "Invalid request. Request is malformed or invalid.",
            )
        if code["used"]:
            return self._aad_error(
                400,
                "invalid_grant",
                54005,
                "OAuth2 Authorization code was already redeemed.",
            )
        code["used"] = True
        if form.get("redirect_uri", "") != code["redirect_uri"]:
            return self._aad_error(
                400,
                "invalid_grant",
                50148,
                "The redirect_uri doesn't match the redirect URI of the authorization request.",
            )
        if code["challenge"]:
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            computed = base64.urlsafe_b64encode(digest).decode().rstrip("=")
            if not verifier or not hmac.compare_digest(computed, code["challenge"]):
                return self._aad_error(
                    400,
                    "invalid_grant",
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                )
        return self._user_tokens(app, self.user(code["user"]), code["scope"])

    def _refresh(self, app: FakeApp, form) -> Response:
        token = self.refresh_tokens.get(form.get("refresh_token", ""))
        if (
            token is None
            or token["client_id"] != app.client_id
            or token["state"] == "used"
        ):
            return self._aad_error(
                400,
                "invalid_grant",
                9002313,
                "Invalid request. Request is malformed or invalid.",
            )
        if token["state"] == "revoked":
            return self._aad_error(
                400,
                "invalid_grant",
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
            )
        if token["state"] == "expired":
            return self._aad_error(
                400,
                "invalid_grant",
                700082,
                "The refresh token has expired due to inactivity.",
            )
        if not app.delegated_consent:
            return self._aad_error(
                400,
                "invalid_grant",
                65001,
                f"The user or administrator has not consented to use the application with ID '{app.client_id}'.",
            )
        token["state"] = "used"  # rotation: the old refresh token stops working
        return self._user_tokens(
            app, self.user(token["user"]), form.get("scope", token["scope"])
        )

    def _user_tokens(self, app: FakeApp, user: FakeUser, scope: str) -> Response:
        scopes = [part.rsplit("/", 1)[-1] for part in scope.split()]
        resource = next((r for r in RESOURCES if r in scope), RESOURCES[0])
        granted = [name for name in scopes if name not in OIDC_SCOPES]
        claims = {
            "aud": resource,
            "appid": app.client_id,
            "oid": user.id,
            "upn": user.upn,
            "name": user.display_name,
            "scp": " ".join(granted),
        }
        body = {"access_token": self._jwt(claims), "scope": " ".join(granted)}
        if "openid" in scopes:
            body["id_token"] = self._id_token(app, user, scopes)
        if "offline_access" in scopes:
            refresh = "rt." + secrets.token_urlsafe(32)
            self.refresh_tokens[refresh] = {
                "user": user.id,
                "client_id": app.client_id,
                "scope": scope,
                "state": "valid",
            }
            body["refresh_token"] = refresh
            self.issued.append(refresh)
        return self._token_response(body)

    def _id_token(self, app: FakeApp, user: FakeUser, scopes: list[str]) -> str:
        """Sign a v2.0 ID token, with the claims of ``profile`` and ``email`` if requested."""
        # The v2.0 endpoint's sub is stable for one user and one app, and
        # differs between apps.
        pairwise = hashlib.sha256(f"{app.client_id}:{user.id}".encode()).digest()
        claims = {
            "ver": "2.0",
            "iss": ID_TOKEN_ISSUER,
            "aud": app.client_id,
            "sub": _b64(pairwise),
            "oid": user.id,
            "preferred_username": user.upn,
        }
        if "profile" in scopes:
            claims["name"] = user.display_name
        if "email" in scopes and user.mail:
            claims["email"] = user.mail
        return self._jwt(claims)

    def _token_response(self, body: dict) -> Response:
        body = {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
        } | body
        return Response(
            json.dumps(body),
            content_type="application/json; charset=utf-8",
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _error_page(self, code: int, text: str) -> Response:
        # The sign-in page shows these errors itself instead of redirecting.
        return Response(
            f"<h1>Sorry, but we're having trouble signing you in.</h1><p>AADSTS{code}: {text}</p>",
            status=400,
            content_type="text/html",
        )

    def _authorize(self, request: Request, tenant: str) -> Response:
        args = request.args
        app = self.apps.get(args.get("client_id", ""))
        if not self._tenant_known(tenant):
            return self._error_page(90002, f"Tenant '{tenant}' not found.")
        if app is None:
            return self._error_page(700016, "Application not found in the directory.")
        redirect_uri = args.get("redirect_uri", "")
        if app.redirect_uris is not None and redirect_uri not in app.redirect_uris:
            return self._error_page(
                50011,
                f"The redirect URI '{redirect_uri}' does not match the redirect URIs configured for the application.",
            )
        state = args.get("state", "")
        if args.get("response_type") != "code":
            return self._redirect(
                redirect_uri, error="unsupported_response_type", state=state
            )
        if args.get("code_challenge") and args.get("code_challenge_method") != "S256":
            return self._redirect(
                redirect_uri,
                error="invalid_request",
                error_description="AADSTS50000: Only S256 is supported.",
                state=state,
            )
        if self.consent_answer:
            return self._redirect(
                redirect_uri,
                error=self.consent_answer,
                error_description="AADSTS65004: User declined to consent to access the app.",
                state=state,
            )
        user = self.user(self.sign_in_as or args.get("login_hint", ""))
        if user is None:
            return self._error_page(
                50034, "The user account does not exist in the directory."
            )
        code = secrets.token_urlsafe(24)
        self.codes[code] = {
            "client_id": app.client_id,
            "redirect_uri": redirect_uri,
            "user": user.id,
            "scope": args.get("scope", ""),
            "challenge": args.get("code_challenge", ""),
            "used": False,
        }
        return self._redirect(
            redirect_uri, code=code, state=state, session_state=str(uuid.uuid4())
        )

    def _admin_consent(self, request: Request, tenant: str) -> Response:
        args = request.args
        app = self.apps.get(args.get("client_id", ""))
        if not self._tenant_known(tenant):
            return self._error_page(90002, f"Tenant '{tenant}' not found.")
        if app is None:
            return self._error_page(700016, "Application not found in the directory.")
        redirect_uri, state = args.get("redirect_uri", ""), args.get("state", "")
        self.consents.append(dict(args))
        if self.consent_answer:
            return self._redirect(
                redirect_uri,
                error=self.consent_answer,
                error_description="AADSTS65004: User declined to consent to access the app.",
                state=state,
            )
        self.grant_consent()
        return self._redirect(
            redirect_uri,
            admin_consent="True",
            tenant=TENANT_ID,
            state=state,
            scope=args.get("scope", ""),
        )

    def _redirect(self, uri: str, **params) -> Response:
        separator = "&" if "?" in uri else "?"
        return Response(
            status=302, headers={"Location": uri + separator + urlencode(params)}
        )

    # -- tokens -----------------------------------------------------------------

    def _jwt(self, claims: dict) -> str:
        now = time.time()
        claims = {
            "iss": f"https://sts.windows.net/{TENANT_ID}/",
            "tid": TENANT_ID,
            "iat": now,
            "nbf": now,
            "exp": now + self.token_lifetime,
            "uti": secrets.token_urlsafe(8),
        } | claims
        header = {"typ": "JWT", "alg": "HS256"}
        signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}"
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64(signature)}"
        self.issued.append(token)
        return token

    def _expired(self, claims: dict) -> bool:
        return claims["exp"] < time.time() or claims["iat"] < self.tokens_valid_after

    def _verify(self, token: str) -> dict | None:
        try:
            header, payload, signature = token.split(".")
            expected = hmac.new(
                self._key, f"{header}.{payload}".encode(), hashlib.sha256
            ).digest()
            if not hmac.compare_digest(_b64(expected), signature):
                return None
            return json.loads(
                base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            )
        except ValueError:
            return None

    # -- Graph ------------------------------------------------------------------

    def _graph_error(
        self, status: int, code: str, message: str, headers: dict | None = None
    ) -> Response:
        body = {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": str(uuid.uuid4()),
                    "client-request-id": str(uuid.uuid4()),
                },
            }
        }
        return Response(
            json.dumps(body),
            status=status,
            content_type="application/json",
            headers=headers or {},
        )

    def _graph(self, request: Request, endpoint: str, values: dict) -> Response:
        self.graph_requests.append(
            {
                "method": request.method,
                "path": request.path,
                "args": request.args.to_dict(),
                "content_type": request.content_type or "",
            }
        )
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return self._graph_error(
                401, "InvalidAuthenticationToken", "Access token is empty."
            )
        claims = self._verify(header.removeprefix("Bearer "))
        if claims is None:
            return self._graph_error(
                401, "InvalidAuthenticationToken", "IDX14100: JWT is not well formed."
            )
        if self._expired(claims):
            return self._graph_error(
                401,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
            )
        if claims["aud"] not in GRAPH_RESOURCES:
            return self._graph_error(
                401, "InvalidAuthenticationToken", "Invalid audience."
            )

        throttled = self._scripted_throttle(request.path)
        if throttled is not None:
            return throttled

        mailbox = self._mailbox_of(endpoint, values, claims)
        if mailbox is None:
            return getattr(self, f"_{endpoint}")(request, claims, **values)
        with self._lock:
            count = self.in_flight.get(mailbox, 0) + 1
            if count > MAILBOX_CONCURRENCY:
                return self._graph_error(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    {"Retry-After": "1"},
                )
            self.in_flight[mailbox] = count
            self.max_in_flight[mailbox] = max(self.max_in_flight.get(mailbox, 0), count)
        try:
            return getattr(self, f"_{endpoint}")(request, claims, **values)
        finally:
            with self._lock:
                self.in_flight[mailbox] -= 1

    def _scripted_throttle(self, path: str) -> Response | None:
        with self._lock:
            for rule in self.throttles:
                if rule.times > 0 and rule.path_contains in path:
                    rule.times -= 1
                    headers = (
                        {"Retry-After": rule.retry_after}
                        if rule.retry_after is not None
                        else {}
                    )
                    message = (
                        "Too many requests"
                        if rule.status == 429
                        else "Service Unavailable"
                    )
                    return self._graph_error(rule.status, rule.code, message, headers)
        return None

    def _mailbox_of(self, endpoint: str, values: dict, claims: dict) -> str | None:
        if endpoint not in ("send_mail", "mail_folder"):
            return None
        if "user" not in values:
            return claims.get("oid")
        user = self.user(values["user"])
        return user.id if user else values["user"]

    def _has(self, claims: dict, *permissions: str) -> bool:
        held = set(claims.get("roles") or []) | set((claims.get("scp") or "").split())
        return any(permission in held for permission in permissions)

    def _denied_directory(self) -> Response:
        return self._graph_error(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )

    def _denied_mail(self) -> Response:
        return self._graph_error(
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )

    def _list_users(self, request: Request, claims: dict) -> Response:
        if not self._has(
            claims, "User.Read.All", "User.ReadBasic.All", "Directory.Read.All"
        ):
            return self._denied_directory()
        args = request.args
        try:
            matches = _parse_filter(args.get("$filter", ""))
        except ValueError:
            return self._graph_error(400, "BadRequest", "Invalid filter clause")
        select = [name for name in args.get("$select", "").split(",") if name]
        top = args.get("$top", "100")
        if not top.isdigit() or not 1 <= int(top) <= 999:
            return self._graph_error(
                400,
                "Request_UnsupportedQuery",
                f"Invalid page size specified: '{top}'. Must be between 1 and 999 inclusive.",
            )
        skip = _decode_skiptoken(args.get("$skiptoken", ""))
        found = [user for user in self.users if matches(user)]
        page = found[skip : skip + int(top)]
        body = {
            "@odata.context": f"{self.url}/v1.0/$metadata#users",
            "value": [user.as_json(select) for user in page],
        }
        if skip + int(top) < len(found):
            query = {
                name: value for name, value in args.items() if name != "$skiptoken"
            }
            query["$skiptoken"] = _encode_skiptoken(skip + int(top))
            body["@odata.nextLink"] = f"{self.url}/v1.0/users?" + urlencode(query)
        return Response(json.dumps(body), content_type="application/json")

    def _get_user(self, request: Request, claims: dict, user: str) -> Response:
        if not self._has(
            claims, "User.Read.All", "User.ReadBasic.All", "Directory.Read.All"
        ):
            return self._denied_directory()
        found = self.user(user)
        if found is None:
            return self._graph_error(
                404,
                "Request_ResourceNotFound",
                f"Resource '{user}' does not exist or one of its queried reference-property objects are not present.",
            )
        select = [name for name in request.args.get("$select", "").split(",") if name]
        return Response(
            json.dumps(found.as_json(select)), content_type="application/json"
        )

    def _get_me(self, request: Request, claims: dict) -> Response:
        if claims.get("idtyp") == "app":
            return self._graph_error(
                400,
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
            )
        if not self._has(claims, "User.Read"):
            return self._denied_mail()
        user = self.user(claims["oid"])
        select = [name for name in request.args.get("$select", "").split(",") if name]
        return Response(
            json.dumps(user.as_json(select)), content_type="application/json"
        )

    def _target(
        self, claims: dict, user: str | None
    ) -> tuple[FakeUser | None, Response | None]:
        """The mailbox a mail request acts on, or the error Graph gives for it."""
        delegated = claims.get("idtyp") != "app"
        key = claims["oid"] if user is None else user
        found = self.user(key)
        if found is None:
            return None, self._graph_error(
                404, "ErrorInvalidUser", f"The requested user '{key}' is invalid."
            )
        if delegated and found.id != claims["oid"]:
            return None, self._denied_mail()
        if not found.has_mailbox:
            return None, self._graph_error(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        return found, None

    def _send_mail(
        self, request: Request, claims: dict, user: str | None = None
    ) -> Response:
        if not self._has(claims, "Mail.Send"):
            return self._denied_mail()
        mailbox, error = self._target(claims, user)
        if error is not None:
            return error

        content_type = (request.mimetype or "").lower()
        if content_type == "text/plain":
            try:
                mime = base64.b64decode(request.get_data(), validate=True)
            except ValueError:
                return self._graph_error(
                    400,
                    "ErrorMimeContentInvalidBase64String",
                    "Invalid base64 string for MIME content.",
                )
            message = email.message_from_bytes(mime, policy=policy.default)
            sender = (getaddresses([str(message.get("From", ""))]) or [("", "")])[0][1]
            recipients = [
                address
                for _, address in getaddresses(
                    [
                        str(v)
                        for name in ("To", "Cc", "Bcc")
                        for v in message.get_all(name, [])
                    ]
                )
            ]
            record = {"format": "mime", "mime": mime, "message": message}
        elif content_type == "application/json":
            try:
                body = json.loads(request.get_data() or b"{}")
                message = body["message"]
            except (ValueError, KeyError, TypeError):
                return self._graph_error(
                    400, "ErrorInvalidRequest", "Cannot read the request body."
                )
            sender = ((message.get("from") or {}).get("emailAddress") or {}).get(
                "address"
            ) or mailbox.mail
            recipients = [
                item["emailAddress"]["address"]
                for name in ("toRecipients", "ccRecipients", "bccRecipients")
                for item in message.get(name) or []
            ]
            record = {"format": "json", "json": body}
        else:
            return self._graph_error(
                415,
                "UnsupportedMediaType",
                f"Content type {content_type!r} is not supported.",
            )

        if not recipients:
            return self._graph_error(
                400, "ErrorInvalidRecipients", "At least one recipient is not valid."
            )
        sender = (sender or mailbox.mail or "").lower()
        if sender not in mailbox.addresses() and sender not in {
            a.lower() for a in mailbox.send_as
        }:
            return self._graph_error(
                403,
                "ErrorSendAsDenied",
                "The user account which was used to submit this request does not have the right "
                "to send mail on behalf of the specified sending account., Cannot submit message.",
            )
        if self.send_delay:
            time.sleep(self.send_delay)
        with self._lock:
            self.sent.append(
                record
                | {
                    "mailbox": mailbox.upn,
                    "from": sender,
                    "recipients": recipients,
                    "path": request.path,
                }
            )
        return Response(status=202, headers={"request-id": str(uuid.uuid4())})

    def _mail_folder(
        self, request: Request, claims: dict, folder: str, user: str | None = None
    ) -> Response:
        if not self._has(
            claims,
            "Mail.ReadWrite",
            "Mail.Read",
            "Mail.ReadBasic.All",
            "Mail.ReadBasic",
        ):
            return self._denied_mail()
        mailbox, error = self._target(claims, user)
        if error is not None:
            return error
        if folder.lower() != "inbox":
            return self._graph_error(
                404,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            )
        body = {
            "id": "AAMkAGI2TGuLAAA=",
            "displayName": "Inbox",
            "parentFolderId": "AAMkAGI2AAEKAAA=",
            "childFolderCount": 0,
            "unreadItemCount": mailbox.inbox_unread,
            "totalItemCount": mailbox.inbox_total,
            "isHidden": False,
        }
        select = [name for name in request.args.get("$select", "").split(",") if name]
        if select:
            body = {
                name: value
                for name, value in body.items()
                if name in select or name == "id"
            }
        return Response(json.dumps(body), content_type="application/json")


def _b64(data) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _encode_skiptoken(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_skiptoken(token: str) -> int:
    if not token:
        return 0
    text = base64.urlsafe_b64decode(token.encode()).decode()
    return int(text.removeprefix("offset:"))


_TERM = re.compile(
    r"\s*(?:startswith\(\s*(?P<sw_name>\w+)\s*,\s*'(?P<sw_value>(?:[^']|'')*)'\s*\)"
    r"|(?P<eq_name>\w+)\s+eq\s+'(?P<eq_value>(?:[^']|'')*)')\s*"
)


def _parse_filter(text: str):
    """A matcher for ``startswith(p,'v')`` and ``p eq 'v'`` terms joined by ``or``.

    Graph compares these properties of users without regard to case.
    """
    if not text:
        return lambda user: True
    terms, position = [], 0
    while True:
        match = _TERM.match(text, position)
        if match is None:
            raise ValueError(text)
        if match["sw_name"]:
            terms.append(
                ("startswith", match["sw_name"], match["sw_value"].replace("''", "'"))
            )
        else:
            terms.append(("eq", match["eq_name"], match["eq_value"].replace("''", "'")))
        position = match.end()
        if position == len(text):
            break
        connective = re.compile(r"or\s+", re.IGNORECASE).match(text, position)
        if connective is None:
            raise ValueError(text)
        position = connective.end()
    for _, name, _ in terms:
        if name not in ("mail", "userPrincipalName", "displayName"):
            raise ValueError(name)

    def matches(user: FakeUser) -> bool:
        for operator, name, value in terms:
            actual = (getattr(user, USER_PROPERTIES[name]) or "").lower()
            wanted = value.lower()
            if (
                actual.startswith(wanted)
                if operator == "startswith"
                else actual == wanted
            ):
                return True
        return False

    return matches
