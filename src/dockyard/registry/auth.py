"""Who may do what: no auth, htpasswd basic auth, or Docker's token flow.

- `NoAuth`: everyone may do everything (the default).
- `BasicAuth`: every request carries `Authorization: Basic`, checked against an
  htpasswd file of bcrypt entries (`htpasswd -B`); any valid user may do anything.
- `TokenAuth`: Docker's token flow. A request without a valid bearer token gets
  401 with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`; the client asks
  the realm (this server's `/token` unless told otherwise) with the user's
  credentials, gets a token listing the access it grants (an HS256-signed JWT,
  signed with `--token-key` or a random per-start secret) and retries with it.

bcrypt is slow by design, so a verified user:password pair is remembered (as a
sha256 of the pair, in memory) and checked off the event loop the first time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time

from dockyard.registry.errors import RegistryError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

TOKEN_TTL = 300
REFRESH_TTL = 30 * 24 * 3600
_LEEWAY = 60
_CACHED_LOGINS = 1024
KNOWN_ACTIONS = ("pull", "push", "delete")


class AuthConfigError(Exception):
    """The auth configuration can't work (unreadable htpasswd file, …); one line."""


class Access:
    """One scope: `repository:library/nginx:pull,push`, `registry:catalog:*`."""

    __slots__ = ("actions", "name", "type")

    def __init__(self, type_: str, name: str, actions: tuple[str, ...]) -> None:
        self.type = type_
        self.name = name
        self.actions = actions

    def scope(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    def __repr__(self) -> str:
        return f"Access({self.scope()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Access) and self.scope() == other.scope()

    def __hash__(self) -> int:
        return hash(self.scope())


def parse_scope(scope: str) -> Access | None:
    """`type:name:actions` (type may carry a `(class)`); None when malformed."""
    type_, _, rest = scope.partition(":")
    name, sep, actions = rest.rpartition(":")
    if not type_ or not sep or not name:
        return None
    type_ = type_.split("(", 1)[0]
    return Access(type_, name, tuple(a for a in actions.split(",") if a))


# -- htpasswd -----------------------------------------------------------------------------


class Htpasswd:
    """Users from an htpasswd file (bcrypt entries); re-read when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime = -1
        self._users: dict[str, bytes] = {}
        self._verified: dict[bytes, str] = {}
        self._looked = time.monotonic()
        self.reload()

    def reload(self) -> None:
        try:
            st = os.stat(self.path)
            if st.st_mtime_ns == self._mtime:
                return
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise AuthConfigError(f"cannot read htpasswd file {self.path}: {e.strerror}") from e
        users: dict[str, bytes] = {}
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not hashed.startswith(("$2y$", "$2b$", "$2a$")):
                raise AuthConfigError(
                    f"{self.path}:{number}: not a bcrypt entry (make it with `htpasswd -B`)"
                )
            users[user] = hashed.encode()
        self._users = users
        self._verified.clear()
        self._mtime = st.st_mtime_ns

    async def check(self, user: str, password: str) -> bool:
        """True when the password is the user's (the file is re-read when it changed)."""
        now = time.monotonic()
        if now - self._looked > 1.0:
            self._looked = now
            try:
                self.reload()
            except AuthConfigError:
                pass  # being rewritten, or broken: keep the users we have
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        if self._verified.get(key) == user:
            return True
        hashed = self._users.get(user)
        if hashed is None:
            return False
        import bcrypt

        ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed)
        if ok:
            if len(self._verified) >= _CACHED_LOGINS:
                self._verified.pop(next(iter(self._verified)))
            self._verified[key] = user
        return ok


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


# -- the three modes ----------------------------------------------------------------------


class NoAuth:
    """Everyone may do everything."""

    async def check(self, authorization: str | None, needed: list[Access], realm: str) -> str:
        return ""


class BasicAuth:
    """htpasswd users may do everything; others get 401 with a Basic challenge."""

    def __init__(self, users: Htpasswd) -> None:
        self.users = users

    async def check(self, authorization: str | None, needed: list[Access], realm: str) -> str:
        credentials = basic_credentials(authorization)
        if credentials is not None and await self.users.check(*credentials):
            return credentials[0]
        raise RegistryError(
            "UNAUTHORIZED",
            "authentication required",
            [{"Type": a.type, "Name": a.name, "Action": ",".join(a.actions)} for a in needed]
            or None,
            headers={"WWW-Authenticate": 'Basic realm="dockyard registry"'},
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenAuth:
    """Docker's token flow with a built-in token endpoint (see the module docstring)."""

    def __init__(
        self,
        users: Htpasswd,
        key: bytes,
        service: str = "dockyard",
        realm: str | None = None,
        issuer: str = "dockyard",
    ) -> None:
        self.users = users
        self.key = key
        self.service = service
        self.realm = realm
        self.issuer = issuer

    # tokens ----------------------------------------------------------------------------

    def sign(self, claims: dict[str, Any]) -> str:
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        mac = hmac.new(self.key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(mac)}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid, current token for this service; None otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        header, payload, signature = parts
        mac = hmac.new(self.key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(mac, _unb64(signature)):
                return None
            if json.loads(_unb64(header)).get("alg") != "HS256":
                return None
            claims = json.loads(_unb64(payload))
        except (ValueError, AttributeError):
            return None
        now = time.time()
        if not isinstance(claims, dict) or claims.get("aud") != self.service:
            return None
        if (
            not now - _LEEWAY <= float(claims.get("exp", 0)) + _LEEWAY
            or float(claims.get("nbf", 0)) > now + _LEEWAY
        ):
            return None
        return claims

    def issue(self, user: str, granted: list[Access], refresh: bool = False) -> dict[str, Any]:
        """The token endpoint's JSON answer for `user` with `granted` access."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + TOKEN_TTL,
            "nbf": now - 1,
            "iat": now,
            "jti": os.urandom(16).hex(),
            "access": [
                {"type": a.type, "name": a.name, "actions": list(a.actions)} for a in granted
            ],
        }
        token = self.sign(claims)
        answer: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_TTL,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        }
        if refresh and user:
            answer["refresh_token"] = self.sign(
                {"iss": self.issuer, "sub": user, "aud": self.service, "typ": "refresh",
                 "exp": now + REFRESH_TTL, "nbf": now - 1, "iat": now}
            )  # fmt: skip
        return answer

    @staticmethod
    def grant(requested: list[Access]) -> list[Access]:
        """What an authenticated user gets: every known action asked for."""
        granted = []
        for access in requested:
            if access.type == "repository":
                actions = tuple(a for a in access.actions if a in (*KNOWN_ACTIONS, "*"))
            elif access.type == "registry" and access.name == "catalog":
                actions = tuple(a for a in access.actions if a == "*")
            else:
                actions = ()
            if actions:
                granted.append(Access(access.type, access.name, actions))
        return granted

    async def token_answer(
        self,
        authorization: str | None,
        scopes: list[str],
        form: dict[str, str] | None = None,
        offline: bool = False,
    ) -> dict[str, Any]:
        """Answer a token request: GET with Basic auth (`offline`: add a refresh token,
        as `offline_token=true` asks), or an OAuth2 POST `form`."""
        user = await self._login(authorization, form)
        requested = [a for a in (parse_scope(s) for s in scopes) if a is not None]
        granted = self.grant(requested) if user else []
        if form is not None:
            offline = form.get("access_type") == "offline"
        return self.issue(user, granted, refresh=offline)

    async def _login(self, authorization: str | None, form: dict[str, str] | None) -> str:
        credentials: tuple[str, str] | None
        if form is not None:
            grant_type = form.get("grant_type", "")
            if grant_type == "refresh_token":
                claims = self.verify(form.get("refresh_token", ""))
                if claims is None or claims.get("typ") != "refresh":
                    raise RegistryError("UNAUTHORIZED", "invalid refresh token")
                return str(claims.get("sub", ""))
            if grant_type == "password":
                credentials = (form.get("username", ""), form.get("password", ""))
            else:
                raise RegistryError("UNSUPPORTED", f"grant_type {grant_type[:50]!r}", status=400)
        else:
            credentials = basic_credentials(authorization)
            if credentials is None:
                return ""  # anonymous: a token that grants nothing
        if not await self.users.check(*credentials):
            raise RegistryError(
                "UNAUTHORIZED",
                "invalid username or password",
                headers={"WWW-Authenticate": 'Basic realm="dockyard token"'},
            )
        return credentials[0]

    # checking requests -----------------------------------------------------------------

    async def check(self, authorization: str | None, needed: list[Access], realm: str) -> str:
        claims = None
        error = ""
        if authorization and authorization[:7].lower() == "bearer ":
            claims = self.verify(authorization[7:].strip())
            error = "invalid_token" if claims is None else ""
        if claims is not None and claims.get("typ") != "refresh":
            if all(self._allows(claims, access) for access in needed):
                return str(claims.get("sub", ""))
            error = "insufficient_scope"
        challenge = f'Bearer realm="{self.realm or realm}",service="{self.service}"'
        if needed:
            challenge += ",scope=" + '"' + " ".join(a.scope() for a in needed) + '"'
        if error:
            challenge += f',error="{error}"'
        raise RegistryError(
            "UNAUTHORIZED",
            "insufficient scope" if error == "insufficient_scope" else "authentication required",
            [{"Type": a.type, "Name": a.name, "Action": ",".join(a.actions)} for a in needed]
            or None,
            status=401,
            headers={"WWW-Authenticate": challenge},
        )

    @staticmethod
    def _allows(claims: dict[str, Any], needed: Access) -> bool:
        for entry in claims.get("access") or []:
            if not isinstance(entry, dict):
                continue
            if entry.get("type") != needed.type or entry.get("name") != needed.name:
                continue
            actions = entry.get("actions") or []
            if "*" in actions or all(a in actions for a in needed.actions):
                return True
        return False
