"""A real OAuth2 authorization server for the tests, built on authlib's server parts.

It listens on 127.0.0.1 (port 0 = the OS picks) over HTTPS with the test CA's certificate
(tests/support/tls.py), and speaks what Microsoft's and Google's endpoints speak for mail:
the token endpoint (RFC 6749: client-credentials and refresh-token grants, client secret
in the body or in Basic), introspection (RFC 7662, for Dovecot's oauth2 passdb and the test
relay) and revocation (RFC 7009). Tokens expire for real (`expires_in` seconds); refresh
tokens rotate when `rotate` is set, and the old one is then refused.
"""

from __future__ import annotations

import hmac
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import requests
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from tests.support.tls import Certificates

SECRET_METHODS = ["client_secret_basic", "client_secret_post"]


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    secret: str
    grant_types: tuple[str, ...]
    mailbox: str | None = None  # whose mail an app-only (client-credentials) token opens
    scope: str = "mail"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        return self.scope if not scope else " ".join(
            s for s in scope.split() if s in self.scope.split() or s.startswith("https://")
            or s == "offline_access") or self.scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in SECRET_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class Token(TokenMixin):  # type: ignore[misc]
    access_token: str
    client_id: str
    username: str
    scope: str
    issued_at: float
    expires_in: int
    refresh_token: str | None = None
    revoked: bool = False
    refresh_revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> str:
        return self.username

    def get_client(self) -> Client:  # not needed by the endpoints used here
        raise NotImplementedError


class _Request(OAuth2Request):  # type: ignore[misc]
    """authlib's request object over what http.server read."""

    def __init__(self, method: str, uri: str, headers: Any, form: dict[str, str]) -> None:
        super().__init__(method, uri, headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


@dataclass
class Counts:
    issued: dict[str, int] = field(default_factory=dict)  # grant type → tokens issued
    refused: int = 0  # token requests answered with an error
    introspections: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    revoked: int = 0


class OAuthServer:
    """Start with `.start()`; `token_url`, `introspection_url`, `revocation_url` to point at.

    `expires_in`: lifetime of access tokens; `rotate`: a refresh returns a new refresh token
    and the old one stops working; `unavailable`: the token endpoint answers 503 (an outage).
    `resource_clients` may introspect (Dovecot, the test relay).
    """

    def __init__(self, certs: Certificates, *, expires_in: int = 3600, rotate: bool = False) -> None:
        self.certs = certs
        self.expires_in = expires_in
        self.rotate = rotate
        self.unavailable = False
        self.clients: dict[str, Client] = {}
        self.resource_clients: set[str] = set()
        self.by_access: dict[str, Token] = {}
        self.by_refresh: dict[str, Token] = {}
        self.counts = Counts()
        self.lock = threading.RLock()
        self.port = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.authorization = self._authorization_server()

    # -- configuration -----------------------------------------------------------------
    def add_client(self, client_id: str, secret: str, *grant_types: str,
                   mailbox: str | None = None) -> Client:
        client = Client(client_id, secret, tuple(grant_types), mailbox)
        self.clients[client_id] = client
        return client

    def add_resource(self, client_id: str, secret: str) -> None:
        """A resource server that may introspect tokens (RFC 7662 §2.1 client auth)."""
        self.add_client(client_id, secret)
        self.resource_clients.add(client_id)

    def issue_refresh_token(self, client_id: str, username: str, scope: str = "mail") -> str:
        """What the consent step of an authorization-code flow would have left the desk."""
        value = secrets.token_urlsafe(32)
        with self.lock:
            token = Token("", client_id, username, scope, time.time(), 0, refresh_token=value)
            self.by_refresh[value] = token
        return value

    # -- what tests do to tokens -----------------------------------------------------------
    def revoke(self, token: str, client: Client) -> int:
        """Revoke a token through the RFC 7009 endpoint, as an admin's tool would."""
        answer = requests.post(self.url("/revoke"), data={"token": token},
                               auth=(client.client_id, client.secret),
                               verify=str(self.certs.ca_file), timeout=10)
        return answer.status_code

    def live_access_tokens(self, username: str | None = None) -> list[str]:
        with self.lock:
            return [t.access_token for t in self.by_access.values()
                    if not t.revoked and not t.is_expired()
                    and (username is None or t.username == username)]

    def introspect(self, token: str) -> dict[str, Any]:
        """What a resource server learns of `token` (used by the test relay)."""
        assert self.resource_clients, "add_resource() first: introspection needs a client"
        client = self.clients[sorted(self.resource_clients)[0]]
        answer = requests.post(self.url("/introspect"), data={"token": token},
                               auth=(client.client_id, client.secret),
                               verify=str(self.certs.ca_file), timeout=10)
        return answer.json()  # type: ignore[no-any-return]

    # -- authlib ---------------------------------------------------------------------------
    def _authorization_server(self) -> AuthorizationServer:
        outer = self

        class Server(AuthorizationServer):  # type: ignore[misc]
            def query_client(self, client_id: str) -> Client | None:
                return outer.clients.get(client_id)

            def save_token(self, token: dict[str, Any], request: Any) -> None:
                client = request.client
                user = request.user or client.mailbox or client.client_id
                saved = Token(token["access_token"], client.client_id, user,
                              token.get("scope", ""), time.time(), int(token["expires_in"]),
                              refresh_token=token.get("refresh_token"))
                with outer.lock:
                    outer.by_access[saved.access_token] = saved
                    if saved.refresh_token:
                        outer.by_refresh[saved.refresh_token] = saved
                    grant = request.payload.grant_type
                    outer.counts.issued[grant] = outer.counts.issued.get(grant, 0) + 1

            def create_oauth2_request(self, request: _Request) -> _Request:
                return request

            def handle_response(self, status: int, body: Any, headers: Any) -> Any:
                return status, body, dict(headers)

            def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
                return None

        class ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = SECRET_METHODS

        class RefreshToken(grants.RefreshTokenGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = SECRET_METHODS

            @property
            def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:
                return outer.rotate

            def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
                with outer.lock:
                    token = outer.by_refresh.get(refresh_token)
                return token if token is not None and not token.refresh_revoked else None

            def authenticate_user(self, refresh_token: Token) -> str:
                return refresh_token.username

            def issue_token(self, user: str, refresh_token: Token) -> dict[str, Any]:
                token = super().issue_token(user, refresh_token)
                if "refresh_token" not in token:
                    token["refresh_token"] = refresh_token.refresh_token  # the same one
                return token  # type: ignore[no-any-return]

            def revoke_old_credential(self, refresh_token: Token) -> None:
                if outer.rotate:
                    refresh_token.refresh_revoked = True

        class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
            CLIENT_AUTH_METHODS = SECRET_METHODS

            def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
                with outer.lock:
                    return outer.by_access.get(token_string)

            def check_permission(self, token: Token, client: Client, request: Any) -> bool:
                return client.client_id in outer.resource_clients

            def introspect_token(self, token: Token) -> dict[str, Any]:
                return {"active": True, "client_id": token.client_id, "token_type": "Bearer",
                        "username": token.username, "scope": token.scope,
                        "iat": int(token.issued_at),
                        "exp": int(token.issued_at + token.expires_in)}

            def create_introspection_payload(self, token: Token | None) -> dict[str, Any]:
                payload = super().create_introspection_payload(token)
                with outer.lock:
                    outer.counts.introspections[bool(payload.get("active"))] += 1
                return payload  # type: ignore[no-any-return]

        class Revocation(RevocationEndpoint):  # type: ignore[misc]
            CLIENT_AUTH_METHODS = SECRET_METHODS

            def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
                with outer.lock:
                    return outer.by_access.get(token_string) or outer.by_refresh.get(token_string)

            def authenticate_token(self, request: Any, client: Client) -> Token | None:
                token = self.query_token(request.form.get("token", ""), None)
                # An administrator's client may revoke any token; others only their own.
                if token and (client.client_id in outer.resource_clients
                              or token.check_client(client)):
                    return token
                return None

            def revoke_token(self, token: Token, request: Any) -> None:
                with outer.lock:
                    if request.form.get("token") == token.access_token:
                        token.revoked = True  # the refresh token stays good
                    else:
                        token.refresh_revoked = True
                    outer.counts.revoked += 1

        server = Server()
        server.register_token_generator("default", BearerTokenGenerator(
            access_token_generator=lambda **_: secrets.token_urlsafe(24),
            refresh_token_generator=lambda **_: secrets.token_urlsafe(32),
            expires_generator=lambda client, grant_type: outer.expires_in,
        ))
        server.register_grant(ClientCredentials)
        server.register_grant(RefreshToken)
        server.register_endpoint(Introspection)
        server.register_endpoint(Revocation)
        return server

    def handle(self, path: str, headers: Any, form: dict[str, str]) -> tuple[int, Any]:
        request = _Request("POST", self.url(path), headers, form)
        if path == "/token":
            if self.unavailable:
                return 503, {"error": "temporarily_unavailable"}
            status, body, _ = self.authorization.create_token_response(request)
            if status != 200:
                with self.lock:
                    self.counts.refused += 1
        elif path == "/introspect":
            status, body, _ = self.authorization.create_endpoint_response("introspection",
                                                                          request)
        elif path == "/revoke":
            status, body, _ = self.authorization.create_endpoint_response("revocation", request)
        else:
            return 404, {"error": "not_found"}
        return status, body

    # -- HTTP ------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    @property
    def token_url(self) -> str:
        return self.url("/token")

    def start(self) -> OAuthServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 64 * 1024)).decode("utf-8", "replace")
                form = dict(parse_qsl(body, keep_blank_values=True))
                try:
                    status, answer = outer.handle(self.path.split("?")[0], self.headers, form)
                except Exception as exc:  # a bug here must show, not hang the client
                    status, answer = 500, {"error": "server_error", "error_description": repr(exc)}
                data = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certs.cert_file, self.certs.key_file)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="oauth-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(10)
