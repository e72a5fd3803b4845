"""A local fake of the Google endpoints the portal uses, served on 127.0.0.1.

It covers:

- the OAuth 2.0 token endpoint: the jwt-bearer grant of service accounts
  (signature checked against the uploaded key, then issuer, audience, time
  stamps, scope claim, subject and the Admin console's domain-wide
  delegation), the authorization code grant with PKCE, and refresh tokens;
- the authorization endpoint, which "signs in" a configured person and
  redirects back with a code, as Google's consent screen does;
- the tokeninfo endpoint (``GET /tokeninfo?access_token=``, at
  https://oauth2.googleapis.com/tokeninfo in production), which describes a
  valid access token and returns 400 ``invalid_token`` for any other, so that
  Dovecot's oauth2 passdb can check tokens against this fake;
- the Admin SDK Directory ``users.list`` with the query syntax (fields, the
  ``=``, ``:`` and ``:prefix*`` operators, quoted values) and paging;
- Gmail ``users.messages.send`` (the raw message is decoded and kept),
  ``users.settings.sendAs.list`` and ``users.labels.get`` for the inbox count.

Errors have Google's JSON shapes and status codes. ``fail_next`` scripts a
failure (a rate limit, a server error) for the next calls of one method.
Paths and accepted scopes are in ``METHODS``; a test compares them with the
discovery documents that google-api-python-client ships. The token and
tokeninfo endpoints are not discovery API methods, so they are not in
``METHODS``. ``check_access_token`` checks a token in the test's own process,
and ``expire_access_tokens`` makes every token issued so far expired.
"""

import base64
import email
import functools
import hashlib
import itertools
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from urllib.parse import urlencode

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ACCESS_TOKEN_SECONDS = 3599
ID_TOKEN_ISSUER = "https://accounts.google.com"

GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
GMAIL_MODIFY = "https://www.googleapis.com/auth/gmail.modify"
GMAIL_SETTINGS = "https://www.googleapis.com/auth/gmail.settings.basic"
GMAIL_FULL = "https://mail.google.com/"
DIRECTORY_READONLY = "https://www.googleapis.com/auth/admin.directory.user.readonly"


@dataclass(frozen=True)
class Method:
    """One API method of the fake, named by its discovery document id."""

    http_method: str
    path: str  # relative to the API root, with {parameters}
    scopes: frozenset[str]  # any one of them authorises the call
    query_parameters: frozenset[str] = frozenset()


METHODS = {
    "gmail.users.messages.send": Method(
        "POST",
        "gmail/v1/users/{userId}/messages/send",
        frozenset(
            {
                GMAIL_FULL,
                "https://www.googleapis.com/auth/gmail.addons.current.action.compose",
                "https://www.googleapis.com/auth/gmail.compose",
                GMAIL_MODIFY,
                GMAIL_SEND,
            }
        ),
    ),
    "gmail.users.settings.sendAs.list": Method(
        "GET",
        "gmail/v1/users/{userId}/settings/sendAs",
        frozenset({GMAIL_FULL, GMAIL_MODIFY, GMAIL_READONLY, GMAIL_SETTINGS}),
    ),
    "gmail.users.labels.get": Method(
        "GET",
        "gmail/v1/users/{userId}/labels/{id}",
        frozenset(
            {
                GMAIL_FULL,
                "https://www.googleapis.com/auth/gmail.labels",
                "https://www.googleapis.com/auth/gmail.metadata",
                GMAIL_MODIFY,
                GMAIL_READONLY,
            }
        ),
    ),
    "directory.users.list": Method(
        "GET",
        "admin/directory/v1/users",
        frozenset(
            {
                "https://www.googleapis.com/auth/admin.directory.user",
                DIRECTORY_READONLY,
                "https://www.googleapis.com/auth/cloud-platform",
            }
        ),
        frozenset(
            {
                "customer",
                "domain",
                "query",
                "maxResults",
                "pageToken",
                "orderBy",
                "sortOrder",
                "viewType",
                "projection",
                "showDeleted",
            }
        ),
    ),
}


@functools.cache
def _rsa_key(index: int) -> rsa.RSAPrivateKey:
    """RSA keys made once per test session; generating one takes a while."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class User:
    address: str
    given_name: str = ""
    family_name: str = ""
    admin: bool = False
    suspended: bool = False
    gmail_enabled: bool = True
    inbox_total: int = 0
    inbox_unread: int = 0
    # send-as address -> verification status ("accepted" or "pending")
    aliases: dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(secrets.randbelow(10**20)))

    @property
    def full_name(self) -> str:
        return f"{self.given_name} {self.family_name}".strip()

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass
class ServiceAccount:
    client_email: str
    client_id: str
    private_key_id: str
    public_key: RSAKey
    deleted_keys: set[str] = field(default_factory=set)


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str
    redirect_uris: set[str]


@dataclass
class AccessToken:
    subject: str  # the user's address, or a service account's client_email
    scopes: frozenset[str]
    expires: float  # epoch seconds
    client_id: str = ""
    # The code grant's access_type parameter. The other grants record "offline".
    access_type: str = "offline"


@dataclass
class SentMessage:
    mailbox: str  # the user the message was sent as
    message: EmailMessage  # as Gmail delivers it: Bcc removed, From checked
    recipients: list[str]
    raw: bytes  # the decoded message exactly as the client sent it


@dataclass
class Failure:
    status: int
    reason: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


class QueryError(ValueError):
    pass


class FakeGoogle:
    """The fake's state and its WSGI application; ``start`` serves it."""

    def __init__(self, *, domains: tuple[str, ...] = ("example.com",)) -> None:
        self.domains = set(domains)
        self.users: dict[str, User] = {}
        self.service_accounts: dict[str, ServiceAccount] = {}
        # client id -> scopes allowed in the Admin console's domain-wide delegation
        self.delegation: dict[str, set[str]] = {}
        self.oauth_clients: dict[str, OAuthClient] = {}
        self.codes: dict[str, dict] = {}
        self.refresh_tokens: dict[str, dict] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.consented: set[tuple[str, str]] = set()  # (client id, user)
        self.sent: list[SentMessage] = []
        self.token_requests: list[dict] = []  # grant type and, for JWTs, the claims
        self.authorization_requests: list[dict] = []
        self.directory_requests: list[dict] = []
        # The person who signs in on the consent screen; None means login_hint.
        self.sign_in_as: str | None = None
        self.declined_scopes: set[str] = set()  # left unticked on the consent screen
        self.deny_consent = False
        self._failures: dict[str, deque[Failure]] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._id_key = RSAKey.import_key(_rsa_key(0))
        self._server = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self._map = Map(
            [
                Rule("/o/oauth2/v2/auth", endpoint="authorize", methods=["GET"]),
                Rule("/token", endpoint="token", methods=["POST"]),
                Rule("/tokeninfo", endpoint="tokeninfo", methods=["GET"]),
            ]
            + [
                Rule(
                    "/" + method.path.replace("{", "<").replace("}", ">"),
                    endpoint=method_id,
                    methods=[method.http_method],
                )
                for method_id, method in METHODS.items()
            ]
        )

    # -- serving ---------------------------------------------------------------

    def start(self) -> "FakeGoogle":
        self._server = make_server("127.0.0.1", 0, self, threaded=True)
        # A short poll interval keeps shutdown, and so each test's teardown, quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            daemon=True,
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/o/oauth2/v2/auth"

    @property
    def tokeninfo_url(self) -> str:
        return f"{self.url}/tokeninfo"

    def config(self) -> dict:
        """The portal settings that point at this fake."""
        return {
            "GOOGLE_TOKEN_URL": self.token_url,
            "GOOGLE_AUTH_URL": self.auth_url,
            "GOOGLE_GMAIL_URL": self.url,
            "GOOGLE_DIRECTORY_URL": self.url,
        }

    # -- setting up the world -------------------------------------------------------

    def add_user(self, address: str, name: str = "", **fields) -> User:
        given, _, family = name.partition(" ")
        user = User(address=address, given_name=given, family_name=family, **fields)
        self.users[address.lower()] = user
        return user

    def new_service_account(
        self, name: str = "portal", *, key_index: int = 1, scopes=()
    ) -> dict:
        """Create a service account and return its JSON key file as a dict."""
        private_key = _rsa_key(key_index)
        account = ServiceAccount(
            client_email=f"{name}@helpdesk-project.iam.gserviceaccount.com",
            client_id=str(100000000000000000000 + next(self._counter)),
            private_key_id=secrets.token_hex(20),
            public_key=RSAKey.import_key(private_key.public_key()),
        )
        self.service_accounts[account.client_email] = account
        if scopes:
            self.allow_delegation(account.client_id, scopes)
        return {
            "type": "service_account",
            "project_id": "helpdesk-project",
            "private_key_id": account.private_key_id,
            "private_key": _pem(private_key),
            "client_email": account.client_email,
            "client_id": account.client_id,
            "auth_uri": self.auth_url,
            "token_uri": self.token_url,
        }

    def allow_delegation(self, client_id: str, scopes) -> None:
        self.delegation[client_id] = set(scopes)

    def delete_key(self, client_email: str) -> None:
        account = self.service_accounts[client_email]
        account.deleted_keys.add(account.private_key_id)

    def add_oauth_client(
        self, redirect_uri: str, client_id: str = "", client_secret: str = ""
    ) -> OAuthClient:
        client = OAuthClient(
            client_id=client_id
            or f"{next(self._counter)}-portal.apps.googleusercontent.com",
            client_secret=client_secret or "GOCSPX-" + secrets.token_urlsafe(20),
            redirect_uris={redirect_uri},
        )
        self.oauth_clients[client.client_id] = client
        return client

    def revoke_grants(self, address: str) -> None:
        """Revoke every refresh token of a user, as removing an app's access does."""
        for grant in self.refresh_tokens.values():
            if grant["subject"].lower() == address.lower():
                grant["revoked"] = True

    def check_access_token(self, token: str) -> AccessToken | None:
        """Return the record of an unexpired access token this fake issued, else None."""
        with self._lock:
            return self._valid_access_token(token)

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expired."""
        with self._lock:
            expired = time.time() - 1
            for token in self.access_tokens.values():
                token.expires = expired

    def fail_next(
        self,
        method_id: str,
        status: int,
        reason: str,
        message: str = "",
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Fail the next ``times`` calls of a method with an error response."""
        failure = Failure(status, reason, message or reason, dict(headers or {}))
        self._failures.setdefault(method_id, deque()).extend([failure] * times)

    # -- WSGI -------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        adapter = self._map.bind_to_environ(environ)
        try:
            endpoint, arguments = adapter.match()
        except HTTPException:
            response = api_error(404, "notFound", "Not Found")
        else:
            with self._lock:
                handler = {
                    "authorize": self._authorize,
                    "token": self._token,
                    "tokeninfo": self._tokeninfo,
                }.get(endpoint) or functools.partial(self._api, endpoint)
                response = handler(request, **arguments)
        return response(environ, start_response)

    # -- the token endpoint ------------------------------------------------------------

    def _token(self, request: Request) -> Response:
        grant_type = request.form.get("grant_type", "")
        if grant_type == JWT_BEARER:
            return self._jwt_bearer(request.form.get("assertion", ""))
        if grant_type == "authorization_code":
            return self._authorization_code(request)
        if grant_type == "refresh_token":
            return self._refresh(request)
        return token_error(
            400, "unsupported_grant_type", "Invalid grant_type: " + grant_type
        )

    def _jwt_bearer(self, assertion: str) -> Response:
        try:
            unverified = jws.extract_compact(assertion.encode("ascii"))
            header = unverified.headers()
            claims = json.loads(unverified.payload)
        except (JoseError, ValueError, UnicodeError):
            return token_error(400, "invalid_request", "Invalid JWT.")
        self.token_requests.append(
            {"grant_type": JWT_BEARER, "header": header, "claims": claims}
        )

        account = self.service_accounts.get(str(claims.get("iss", "")))
        if account is None:
            return token_error(400, "invalid_grant", "Invalid grant: account not found")
        if header.get("alg") != "RS256":
            return token_error(400, "invalid_grant", "Invalid JWT Signature.")
        if (
            header.get("kid") != account.private_key_id
            or header["kid"] in account.deleted_keys
        ):
            return token_error(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            jwt.decode(assertion, account.public_key, algorithms=["RS256"])
        except JoseError:
            return token_error(400, "invalid_grant", "Invalid JWT Signature.")

        if claims.get("aud") != self.token_url:
            return token_error(
                400, "invalid_grant", "Invalid JWT: Failed audience check."
            )
        now = time.time()
        issued, expires = claims.get("iat"), claims.get("exp")
        if (
            not isinstance(issued, int | float)
            or not isinstance(expires, int | float)
            or expires - issued > 3600
            or issued > now + 300
            or expires < now - 300
        ):
            return token_error(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in "
                "a reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        scopes = frozenset(str(claims.get("scope", "")).split())
        if not scopes:
            return token_error(
                400,
                "invalid_scope",
                "Invalid OAuth scope or ID token audience provided.",
            )

        subject = claims.get("sub")
        if subject is None:
            return self._issue(account.client_email, scopes, account.client_id)
        user = self.users.get(str(subject).lower())
        if user is None or user.domain not in self.domains:
            return token_error(400, "invalid_grant", "Invalid email or User ID")
        if not scopes <= self.delegation.get(account.client_id, set()):
            return token_error(
                401,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, "
                "or client not authorized for any of the scopes requested.",
            )
        return self._issue(user.address, scopes, account.client_id)

    def _issue(
        self,
        subject: str,
        scopes: frozenset[str],
        client_id: str = "",
        access_type: str = "offline",
        **extra,
    ) -> Response:
        token = "ya29." + secrets.token_urlsafe(32)
        self.access_tokens[token] = AccessToken(
            subject,
            scopes,
            time.time() + ACCESS_TOKEN_SECONDS,
            client_id,
            access_type,
        )
        body = {
            "access_token": token,
            "expires_in": ACCESS_TOKEN_SECONDS,
            "token_type": "Bearer",
        }
        body.update(extra)
        return json_response(body)

    def _client(self, request: Request) -> OAuthClient | None:
        client_id = request.form.get("client_id", "")
        secret = request.form.get("client_secret", "")
        if request.authorization and request.authorization.type == "basic":
            client_id = request.authorization.username or ""
            secret = request.authorization.password or ""
        client = self.oauth_clients.get(client_id)
        if client is None or not secrets.compare_digest(client.client_secret, secret):
            return None
        return client

    def _authorization_code(self, request: Request) -> Response:
        form = request.form
        self.token_requests.append(
            {
                "grant_type": "authorization_code",
                "code_verifier": form.get("code_verifier"),
            }
        )
        client = self._client(request)
        if client is None:
            return token_error(401, "invalid_client", "Unauthorized")
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or grant["client_id"] != client.client_id:
            return token_error(400, "invalid_grant", "Bad Request")
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return token_error(400, "redirect_uri_mismatch", "Bad Request")
        if grant["code_challenge"]:
            verifier = form.get("code_verifier", "")
            if grant["code_challenge_method"] == "S256":
                computed = _b64url(hashlib.sha256(verifier.encode()).digest())
            else:
                computed = verifier
            if not verifier or computed != grant["code_challenge"]:
                return token_error(400, "invalid_grant", "Invalid code verifier.")

        extra = {"scope": " ".join(sorted(grant["scopes"]))}
        if "openid" in grant["scopes"]:
            extra["id_token"] = self._id_token(client.client_id, grant["subject"])
        first_consent = (client.client_id, grant["subject"]) not in self.consented
        self.consented.add((client.client_id, grant["subject"]))
        # Google issues a refresh token for offline access on the first consent,
        # and again only when prompt=consent asked for a new consent.
        if grant["access_type"] == "offline" and (
            first_consent or grant["prompt"] == "consent"
        ):
            refresh_token = "1//" + secrets.token_urlsafe(40)
            self.refresh_tokens[refresh_token] = {
                "client_id": client.client_id,
                "subject": grant["subject"],
                "scopes": grant["scopes"],
                "revoked": False,
            }
            extra["refresh_token"] = refresh_token
        return self._issue(
            grant["subject"],
            grant["scopes"],
            client.client_id,
            grant["access_type"],
            **extra,
        )

    def _refresh(self, request: Request) -> Response:
        self.token_requests.append({"grant_type": "refresh_token"})
        client = self._client(request)
        if client is None:
            return token_error(401, "invalid_client", "Unauthorized")
        grant = self.refresh_tokens.get(request.form.get("refresh_token", ""))
        if grant is None or grant["revoked"] or grant["client_id"] != client.client_id:
            return token_error(
                400, "invalid_grant", "Token has been expired or revoked."
            )
        extra = {"scope": " ".join(sorted(grant["scopes"]))}
        return self._issue(grant["subject"], grant["scopes"], client.client_id, **extra)

    def _id_token(self, client_id: str, subject: str) -> str:
        user = self.users[subject.lower()]
        now = int(time.time())
        claims = {
            "iss": ID_TOKEN_ISSUER,
            "aud": client_id,
            "azp": client_id,
            "sub": user.id,
            "email": user.address,
            "email_verified": True,
            "iat": now,
            "exp": now + 3600,
        }
        if user.domain in self.domains:
            claims["hd"] = user.domain
        return jwt.encode({"alg": "RS256", "kid": "fake"}, claims, self._id_key)

    # -- the tokeninfo endpoint -----------------------------------------------------------

    def _valid_access_token(self, token: str) -> AccessToken | None:
        found = self.access_tokens.get(token)
        if found is None or found.expires < time.time():
            return None
        return found

    def _tokeninfo(self, request: Request) -> Response:
        token = self._valid_access_token(request.args.get("access_token", ""))
        if token is None:
            return token_error(400, "invalid_token", "Invalid Value")
        user = self.users.get(token.subject.lower())
        if user is not None:
            subject_id = user.id
        else:
            # A service account's own token names no user, so the fake puts
            # the account's client id in sub.
            subject_id = token.client_id
        # Google sends the numbers in tokeninfo as strings.
        # NOTE: Google documents email and email_verified as present only when
        # the token has the email scope. This fake always sends them, so that
        # Dovecot's username_attribute = email works with a mail-only token.
        return json_response(
            {
                "azp": token.client_id,
                "aud": token.client_id,
                "sub": subject_id,
                "scope": " ".join(sorted(token.scopes)),
                "exp": str(int(token.expires)),
                "expires_in": str(max(0, int(token.expires - time.time()))),
                "email": token.subject,
                "email_verified": "true",
                "access_type": token.access_type,
            }
        )

    # -- the authorization endpoint (consent screen) --------------------------------------

    def _authorize(self, request: Request) -> Response:
        args = request.args
        self.authorization_requests.append(dict(args))
        client = self.oauth_clients.get(args.get("client_id", ""))
        if client is None:
            return Response("Error 401: invalid_client", status=401)
        redirect_uri = args.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            return Response("Error 400: redirect_uri_mismatch", status=400)
        state = args.get("state", "")
        if args.get("response_type") != "code":
            return redirect_back(
                redirect_uri, error="unsupported_response_type", state=state
            )
        if self.deny_consent:
            return redirect_back(redirect_uri, error="access_denied", state=state)

        who = (self.sign_in_as or args.get("login_hint", "")).lower()
        if who not in self.users:
            return Response("Couldn't find your Google Account", status=400)
        requested = frozenset(args.get("scope", "").split())
        granted = requested - self.declined_scopes
        code = "4/" + secrets.token_urlsafe(30)
        self.codes[code] = {
            "client_id": client.client_id,
            "redirect_uri": redirect_uri,
            "subject": self.users[who].address,
            "scopes": granted,
            "code_challenge": args.get("code_challenge", ""),
            "code_challenge_method": args.get("code_challenge_method", "plain"),
            "access_type": args.get("access_type", "online"),
            "prompt": args.get("prompt", ""),
        }
        return redirect_back(
            redirect_uri, code=code, scope=" ".join(sorted(granted)), state=state
        )

    # -- the APIs -------------------------------------------------------------------

    def _api(self, method_id: str, request: Request, **arguments) -> Response:
        method = METHODS[method_id]
        header = request.headers.get("Authorization", "")
        token = (
            self.access_tokens.get(header.removeprefix("Bearer "))
            if header.startswith("Bearer ")
            else None
        )
        if token is None or token.expires < time.time():
            return api_error(
                401,
                "authError",
                "Request had invalid authentication credentials.",
                status_name="UNAUTHENTICATED",
            )
        if not token.scopes & method.scopes:
            return api_error(
                403,
                "insufficientPermissions",
                "Request had insufficient authentication scopes.",
                status_name="PERMISSION_DENIED",
                details_reason="ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            )
        unknown = (
            set(request.args)
            - method.query_parameters
            - {"alt", "fields", "prettyPrint"}
        )
        if unknown:
            return api_error(
                400, "badRequest", f"Unknown parameter: {sorted(unknown)[0]}"
            )

        queued = self._failures.get(method_id)
        if queued:
            failure = queued.popleft()
            response = api_error(failure.status, failure.reason, failure.message)
            response.headers.update(failure.headers)
            return response

        user = self.users.get(token.subject.lower())
        if method_id == "directory.users.list":
            return self._list_users(request, user)
        user_id = arguments["userId"]
        if user is None or (
            user_id != "me" and user_id.lower() != user.address.lower()
        ):
            return api_error(403, "forbidden", f"Delegation denied for {token.subject}")
        if not user.gmail_enabled:
            return api_error(400, "failedPrecondition", "Mail service not enabled")
        if method_id == "gmail.users.messages.send":
            return self._send(request, user)
        if method_id == "gmail.users.settings.sendAs.list":
            return json_response({"sendAs": send_as_list(user)})
        return self._label(user, arguments["id"])

    def _send(self, request: Request, user: User) -> Response:
        try:
            body = json.loads(request.get_data() or b"{}")
            raw = body["raw"]
            data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (ValueError, KeyError, TypeError):
            return api_error(400, "invalidArgument", "Invalid value for ByteString")
        message = email.message_from_bytes(data, policy=policy.default)
        recipients = [
            address
            for header in ("To", "Cc", "Bcc")
            for _, address in email.utils.getaddresses(message.get_all(header, []))
            if address
        ]
        if not recipients:
            return api_error(400, "invalidArgument", "Recipient address required")
        del message["Bcc"]
        # Gmail sends from the primary address when From is not a usable alias.
        _, from_address = email.utils.parseaddr(str(message.get("From", "")))
        usable = {
            item["sendAsEmail"].lower()
            for item in send_as_list(user)
            if item.get("isPrimary") or item.get("verificationStatus") == "accepted"
        }
        if from_address.lower() not in usable:
            del message["From"]
            message["From"] = user.address
        self.sent.append(SentMessage(user.address, message, recipients, data))
        message_id = f"{next(self._counter):016x}"
        return json_response(
            {"id": message_id, "threadId": message_id, "labelIds": ["SENT"]}
        )

    def _label(self, user: User, label_id: str) -> Response:
        if label_id != "INBOX":
            return api_error(404, "notFound", "Requested entity was not found.")
        return json_response(
            {
                "id": "INBOX",
                "name": "INBOX",
                "type": "system",
                "messagesTotal": user.inbox_total,
                "messagesUnread": user.inbox_unread,
                "threadsTotal": user.inbox_total,
                "threadsUnread": user.inbox_unread,
            }
        )

    def _list_users(self, request: Request, caller: User | None) -> Response:
        args = request.args
        self.directory_requests.append(dict(args))
        if caller is None or not caller.admin:
            return api_error(
                403, "forbidden", "Not Authorized to access this resource/api"
            )
        customer, domain = args.get("customer"), args.get("domain")
        if not customer and not domain:
            return api_error(400, "badRequest", "Bad Request")
        if customer and customer not in ("my_customer", "C01fake"):
            return api_error(400, "badRequest", "Bad Request")
        if domain and domain not in self.domains:
            return api_error(404, "notFound", "Domain not found.")
        try:
            page_size = int(args.get("maxResults", "100"))
        except ValueError:
            return api_error(400, "invalid", "Invalid Input")
        if not 1 <= page_size <= 500:
            return api_error(400, "invalid", "Invalid Input")
        try:
            clauses = parse_query(args.get("query", ""))
        except QueryError:
            return api_error(400, "invalid", "Invalid Input")

        users = [
            user
            for user in self.users.values()
            if user.domain in self.domains
            and (not domain or user.domain == domain)
            and all(clause(user) for clause in clauses)
        ]
        order = args.get("orderBy", "")
        if order == "givenName":
            users.sort(key=lambda user: user.given_name.lower())
        elif order == "familyName":
            users.sort(key=lambda user: user.family_name.lower())
        else:
            users.sort(key=lambda user: user.address.lower())
        if args.get("sortOrder") == "DESCENDING":
            users.reverse()

        start = 0
        if args.get("pageToken"):
            start = self._page_offset(args["pageToken"], args.get("query", ""))
            if start is None:
                return api_error(400, "invalid", "Invalid Input")
        page = users[start : start + page_size]
        body: dict = {"kind": "admin#directory#users", "etag": '"fake"'}
        if page:
            body["users"] = [user_resource(user) for user in page]
        if start + page_size < len(users):
            body["nextPageToken"] = _b64url(
                json.dumps(
                    {"offset": start + page_size, "query": args.get("query", "")}
                ).encode()
            )
        return json_response(body)

    @staticmethod
    def _page_offset(page_token: str, query: str) -> int | None:
        try:
            state = json.loads(
                base64.urlsafe_b64decode(page_token + "=" * (-len(page_token) % 4))
            )
        except ValueError:
            return None
        if not isinstance(state, dict) or state.get("query") != query:
            return None
        return int(state.get("offset", 0))


# -- the Directory query language -------------------------------------------------------


def _split_clauses(query: str) -> list[str]:
    """Split on whitespace outside single quotes; \\' escapes a quote."""
    clauses, current, quoted, escaped = [], "", False, False
    for ch in query:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "'":
            quoted = not quoted
            current += ch
        elif ch.isspace() and not quoted:
            if current:
                clauses.append(current)
            current = ""
        else:
            current += ch
    if quoted:
        raise QueryError("unbalanced quote")
    if current:
        clauses.append(current)
    return clauses


_TEXT_FIELDS = {
    "email": lambda user: [user.address, *user.aliases],
    "givenName": lambda user: [user.given_name],
    "familyName": lambda user: [user.family_name],
    "name": lambda user: [user.full_name],
}
_PREFIX_FIELDS = {"email", "givenName", "familyName"}
_BOOLEAN_FIELDS = {"isAdmin": "admin", "isSuspended": "suspended"}


def parse_query(query: str):
    """Return one predicate per clause of a users.list query."""
    predicates = []
    for clause in _split_clauses(query.strip()):
        predicates.append(_parse_clause(clause))
    return predicates


def _parse_clause(clause: str):
    for operator in ("=", ":"):
        name, found, value = clause.partition(operator)
        if found and name and "'" not in name:
            break
    else:
        # A bare word compares against the given name, family name or email.
        word = clause.strip("'").lower()
        return lambda user: any(
            word in text.lower()
            for text in (user.given_name, user.family_name, user.address)
        )

    if value.startswith("'") and value.endswith("'") and len(value) >= 2:
        value = value[1:-1]
    if name in _BOOLEAN_FIELDS:
        if operator != "=" or value not in ("true", "false"):
            raise QueryError(clause)
        attribute, wanted = _BOOLEAN_FIELDS[name], value == "true"
        return lambda user: getattr(user, attribute) == wanted
    if name not in _TEXT_FIELDS:
        raise QueryError(clause)
    texts, expected = _TEXT_FIELDS[name], value.lower()
    if operator == ":" and expected.endswith("*"):
        if name not in _PREFIX_FIELDS:
            raise QueryError(clause)
        prefix = expected[:-1]
        return lambda user: any(text.lower().startswith(prefix) for text in texts(user))
    if operator == ":":
        return lambda user: any(expected in text.lower() for text in texts(user))
    return lambda user: any(text.lower() == expected for text in texts(user))


# -- response shapes -------------------------------------------------------------------


def json_response(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def token_error(status: int, error: str, description: str) -> Response:
    return json_response({"error": error, "error_description": description}, status)


def api_error(
    status: int,
    reason: str,
    message: str,
    *,
    status_name: str = "",
    details_reason: str = "",
) -> Response:
    """A Google API error body: code, message, errors[] and status."""
    status_name = status_name or {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
    }.get(status, "UNKNOWN")
    domain = "usageLimits" if "Limit" in reason else "global"
    error = {
        "code": status,
        "message": message,
        "errors": [{"message": message, "domain": domain, "reason": reason}],
        "status": status_name,
    }
    if details_reason:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": details_reason,
                "domain": "googleapis.com",
            }
        ]
    return json_response({"error": error}, status)


def redirect_back(redirect_uri: str, **params) -> Response:
    separator = "&" if "?" in redirect_uri else "?"
    response = Response(status=302)
    response.headers["Location"] = redirect_uri + separator + urlencode(params)
    return response


def send_as_list(user: User) -> list[dict]:
    items = [
        {
            "sendAsEmail": user.address,
            "displayName": user.full_name,
            "isPrimary": True,
            "isDefault": True,
        }
    ]
    for address, status in user.aliases.items():
        items.append(
            {
                "sendAsEmail": address,
                "displayName": user.full_name,
                "treatAsAlias": True,
                "verificationStatus": status,
            }
        )
    return items


def user_resource(user: User) -> dict:
    return {
        "kind": "admin#directory#user",
        "id": user.id,
        "primaryEmail": user.address,
        "name": {
            "givenName": user.given_name,
            "familyName": user.family_name,
            "fullName": user.full_name,
        },
        "isAdmin": user.admin,
        "suspended": user.suspended,
        "isMailboxSetup": user.gmail_enabled,
    }
