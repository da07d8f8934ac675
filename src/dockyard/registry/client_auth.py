"""Registry credentials: the auth.json file podman and skopeo share, and auth challenges.

Where credentials are kept (podman's rules, so `podman login` and `dockyard login`
see each other's logins):

- written to, and read first: `--authfile FILE`, else `$REGISTRY_AUTH_FILE`, else
  `$XDG_RUNTIME_DIR/containers/auth.json`, else `/run/containers/<uid>/auth.json`;
- read after it: `$XDG_CONFIG_HOME/containers/auth.json` (~/.config/…) and Docker's
  `$DOCKER_CONFIG/config.json` (~/.docker/config.json).

The format is Docker's: `{"auths": {"127.0.0.1:5000": {"auth": base64("user:pass")}}}`.
A key may be a host (`quay.io`), a host and repository path (`quay.io/team`,
the longest match wins) or a URL (`https://index.docker.io/v1/`: Docker's key for
Docker Hub). Credential helpers (`credsStore`) are not run.

The registry side of authentication: `WWW-Authenticate` challenges (Basic, or
Bearer with realm/service/scope: the token flow of Docker Hub and distribution).
"""

from __future__ import annotations

import base64
import json
import os

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy reads this as True
if TYPE_CHECKING:
    from typing import Any

ENV = "REGISTRY_AUTH_FILE"
DOCKER_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_LEGACY_KEY = "https://index.docker.io/v1/"


class AuthFileError(Exception):
    """The credentials file can't be read or written; the message names it."""


class Credentials:
    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def __repr__(self) -> str:
        return f"Credentials({self.username!r}, ***)"

    def basic(self) -> str:
        """The value of an `Authorization: Basic …` header."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


# ---------------------------------------------------------------------------- files


def auth_file(flag: str | None = None) -> str:
    """The file logins are written to (and read from first)."""
    if flag:
        return flag
    if os.environ.get(ENV):
        return os.environ[ENV]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "containers", "auth.json")
    return f"/run/containers/{os.getuid()}/auth.json"


def read_files(flag: str | None = None) -> list[str]:
    """Every file credentials are looked up in, in order."""
    home = os.path.expanduser("~")
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    docker = os.environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    files = [auth_file(flag)]
    if not flag:  # an explicit --authfile is the only one read, as podman does
        files += [
            os.path.join(config_home, "containers", "auth.json"),
            os.path.join(docker, "config.json"),
        ]
    return list(dict.fromkeys(files))


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise AuthFileError(f"cannot read {path}: {err.strerror or err}") from None
    if not data.strip():
        return {}
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise AuthFileError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
        raise AuthFileError(f'{path}: expected {{"auths": {{REGISTRY: {{"auth": …}}}}}}')
    return doc


def _normalize_key(key: str) -> str:
    """`https://index.docker.io/v1/` → docker.io; `http://host:5000/` → host:5000."""
    if key == DOCKER_HUB_LEGACY_KEY:
        return "docker.io"
    if "://" in key:
        key = key.split("://", 1)[1]
        host, _, rest = key.partition("/")
        key = host if rest in ("", "v1/", "v2/", "v1", "v2") else f"{host}/{rest}"
    key = key.rstrip("/")
    host, sep, rest = key.partition("/")
    if host in DOCKER_HUB_KEYS:
        host = "docker.io"
    return f"{host}{sep}{rest}"


def _decode(entry: Any, path: str, key: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise AuthFileError(f'{path}: the "auth" of {key} is not base64 of user:password')
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret)
    return None


def lookup(registry: str, repository: str = "", flag: str | None = None) -> Credentials | None:
    """Stored credentials for `registry` (a host) and `repository` under it, if any."""
    host = _normalize_key(registry)
    wanted = f"{host}/{repository}" if repository else host
    for path in read_files(flag):
        auths = _read(path).get("auths") or {}
        best: tuple[int, Credentials] | None = None
        for key, entry in auths.items():
            norm = _normalize_key(str(key))
            if wanted == norm or wanted.startswith(norm + "/"):
                creds = _decode(entry, path, str(key))
                if creds is not None and (best is None or len(norm) > best[0]):
                    best = (len(norm), creds)
        if best is not None:
            return best[1]
    return None


def store(registry: str, creds: Credentials, flag: str | None = None) -> str:
    """Record a login in the auth file (0600, written atomically); returns its path."""
    path = auth_file(flag)
    doc = _read(path)
    auths = doc.setdefault("auths", {})
    key = _normalize_key(registry)
    for old in [k for k in auths if _normalize_key(str(k)) == key]:
        del auths[old]
    raw = f"{creds.username}:{creds.password}".encode()
    auths[key] = {"auth": base64.b64encode(raw).decode()}
    _write(path, doc)
    return path


def remove(registry: str, flag: str | None = None) -> bool:
    """Forget the login for `registry`; False when there was none in the auth file."""
    path = auth_file(flag)
    doc = _read(path)
    auths = doc.get("auths") or {}
    key = _normalize_key(registry)
    found = [k for k in auths if _normalize_key(str(k)) == key]
    for old in found:
        del auths[old]
    if found:
        _write(path, doc)
    return bool(found)


def _write(path: str, doc: dict[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    temp = f"{path}.{os.urandom(4).hex()}.tmp"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            json.dump(doc, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as err:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise AuthFileError(f"cannot write {path}: {err.strerror or err}") from None


# ---------------------------------------------------------------------------- challenges


class Challenge:
    """A parsed `WWW-Authenticate` header: scheme ("basic"/"bearer") and parameters."""

    def __init__(self, scheme: str, params: dict[str, str]) -> None:
        self.scheme = scheme
        self.params = params

    def __repr__(self) -> str:
        return f"Challenge({self.scheme!r}, {self.params!r})"


def parse_challenge(header: str) -> Challenge | None:
    """`Bearer realm="https://auth",service="registry",scope="repository:x:pull"`."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            i += 1
            value = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(rest[i])
                i += 1
            i += 1  # the closing quote
            params[key] = "".join(value)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
    return Challenge(scheme.lower(), params)


def token_from(body: bytes) -> tuple[str, float]:
    """The token in a token server's answer (`token` or `access_token`), and its lifetime."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise ValueError("the token server's answer is not JSON") from None
    token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise ValueError("the token server's answer has no token")
    expires = doc.get("expires_in")
    lifetime = float(expires) if isinstance(expires, int | float) and expires > 0 else 60.0
    return token, lifetime
