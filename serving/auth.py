"""Bearer-token authentication for the gRPC server, and the tokens file.

Clients send `authorization: Bearer <token>` metadata on every call. The server knows tokens
only by their SHA-256 hashes, from a tokens file (`--tokens-file`) and/or `$RECSVC_TOKENS`:

    # name        role    hash                                                   [rate=RPS]
    storefront    client  sha256:3b9c...e1                                       rate=500
    privacy-desk  admin   sha256:91d2...0a

(`$RECSVC_TOKENS` holds the same lines separated by `;` or newlines.) `recsvc token create
--name storefront [--admin]` makes a token, prints it once and appends its hash line; the
token itself is stored nowhere. Tokens are 256 random bits, so one unsalted SHA-256 is enough
at rest (a slow password hash such as scrypt protects guessable passwords, and would cost
every request milliseconds); the presented token's hash is compared with every known hash in
constant time (`hmac.compare_digest`, no early exit). The file is re-read when it changes
(checked at most once a second), so a revoked token stops working without a restart.

`AuthInterceptor` answers UNAUTHENTICATED without a valid token, PERMISSION_DENIED when a
`client` token calls an admin RPC (ForgetUser), and lets the health service through without a
token so load balancers can probe. With `--insecure-no-auth` every caller is let in, except
to admin RPCs, which then nobody can call. Rejections are counted in metrics and logged at most
every few seconds per reason, never with the token.

The interceptor decides when the call arrives (from method and metadata) and hands back the
real handler untouched, so an accepted call pays one hash and a few comparisons.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from recsvc.errors import InvalidInput
from serving import metrics

log = logging.getLogger(__name__)

TOKENS_ENV = "RECSVC_TOKENS"
ROLES = ("client", "admin")
TOKEN_PREFIX = "rsv_"
HASH_SCHEME = "sha256"
# Callable without a token: load balancers probe health.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
# Callable only with an admin token.
ADMIN_METHODS = frozenset({"/recsvc.v1.Recommender/ForgetUser"})
RELOAD_CHECK_SECONDS = 1.0
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")

Continuation = Callable[[grpc.HandlerCallDetails], "grpc.RpcMethodHandler | None"]


@dataclass(frozen=True)
class Client:
    """A known caller: who (for logs, metrics and rate limits), what it may do, its limit."""

    name: str
    role: str  # "client" or "admin"
    digest: bytes = field(repr=False)  # sha256 of the token
    rate: float | None = None  # requests/s for this client (None: the server's default)

    @property
    def admin(self) -> bool:
        return self.role == "admin"


# The client of the call being intercepted (set by AuthInterceptor around the rest of the
# interceptor chain, so the rate limiter knows whom to count).
_CURRENT: contextvars.ContextVar[Client | None] = contextvars.ContextVar("recsvc_client", default=None)


def current_client() -> Client | None:
    """The authenticated client of the call being intercepted (None: none or no auth)."""
    return _CURRENT.get()


# -- tokens -----------------------------------------------------------------------------------
def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """`sha256:<hex>` of a token: what the tokens file stores."""
    return f"{HASH_SCHEME}:{hashlib.sha256(token.encode('utf-8')).hexdigest()}"


def _looks_like_a_token(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX)


def read_tokens_file(path: Path) -> str:
    """The text of a tokens file (a UTF-8 byte-order mark, as Windows editors write, skipped)."""
    return path.read_text(encoding="utf-8-sig")


def parse_tokens(text: str, source: str) -> list[Client]:
    """Clients from tokens-file lines (see the module docstring). Raises InvalidInput naming
    the source and line of the first malformed one, never quoting a field (a token pasted
    into any column must not reach the logs)."""
    clients: list[Client] = []
    names: set[str] = set()
    digests: dict[str, str] = {}  # hex digest -> the name that holds it
    entries = [
        (number, part.strip())
        for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1)
        for part in line.split("#", 1)[0].split(";")
    ]
    for index, (number, line) in enumerate((e for e in entries if e[1]), start=1):
        where = f"{source} line {number}" if source != TOKENS_ENV else f"{source} entry {index}"
        fields = line.split()
        if len(fields) not in (3, 4):
            raise InvalidInput(where, "expected 'name role sha256:<hex> [rate=RPS]'")
        name, role, hashed = fields[:3]
        # The values are not repeated: a token pasted into the wrong column would reach the logs.
        if not _NAME.match(name):
            raise InvalidInput(where, "the name must be 1-64 of A-Z a-z 0-9 _ . @ - (value not shown)")
        if _looks_like_a_token(name):  # it would be shown in logs, metrics and `token list`
            raise InvalidInput(where, f"the name must not start with {TOKEN_PREFIX} as tokens do "
                               "(value not shown)")
        if role not in ROLES:
            raise InvalidInput(where, f"the role must be one of {', '.join(ROLES)} (value not shown)")
        scheme, _, digest = hashed.partition(":")
        if scheme != HASH_SCHEME or not _HEX.match(digest):
            raise InvalidInput(where, "the hash must be sha256:<64 hex digits> (never the token)")
        rate: float | None = None
        if len(fields) == 4:
            key, _, value = fields[3].partition("=")
            try:
                rate = float(value)
            except ValueError:
                rate = -1.0
            if key != "rate" or not rate >= 0:
                raise InvalidInput(where, "the 4th field must be rate=<requests per second, 0 or "
                                   "more> (value not shown)")
        if name in names:
            raise InvalidInput(where, f"name '{name}' appears twice")
        if digest in digests:  # a copied line: one token would act as two clients, one admin?
            raise InvalidInput(where, f"the same hash as the line of '{digests[digest]}': "
                               "one token per client (recsvc token create makes a new one)")
        names.add(name)
        digests[digest] = name
        clients.append(Client(name, role, bytes.fromhex(digest), rate))
    return clients


def add_token(path: str | Path, name: str, role: str = "client", rate: float | None = None) -> str:
    """Create a token for `name`, append its hash line to `path` (0600), return the token.

    Raises InvalidInput for a bad name or role, or a name the file already has.
    """
    if role not in ROLES:
        raise InvalidInput("--role", f"must be one of {', '.join(ROLES)}")
    if not _NAME.match(name):
        raise InvalidInput("--name", "must be 1-64 of A-Z a-z 0-9 _ . @ -")
    if _looks_like_a_token(name):
        raise InvalidInput("--name", f"must not start with {TOKEN_PREFIX}, as tokens do")
    if rate is not None and not rate >= 0:
        raise InvalidInput("--rate", f"must be 0 or more, got {rate}")
    from recsvc.ids import line_to_append  # pandas: not when the CLI builds its parser

    path = Path(path)
    existing = parse_tokens(read_tokens_file(path), str(path)) if path.exists() else []
    if any(c.name == name for c in existing):
        raise InvalidInput("--name", f"'{name}' already has a token in {path} (revoke it first)")
    token = new_token()
    line = f"{name} {role} {hash_token(token)}" + (f" rate={rate:g}" if rate is not None else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab+") as handle:
        if not existing and os.fstat(fd).st_size == 0:
            handle.write(b"# recsvc tokens: name role sha256:<hash of the token> [rate=RPS]\n")
        handle.write(line_to_append(handle, line))  # after a hand-edited last line, a break
    return token


def remove_token(path: str | Path, name: str) -> bool:
    """Drop `name`'s line from the tokens file; False when it had none.

    The file is replaced whole (a server never reads half of it), keeping its mode and owner:
    a revoke run as root must leave a file the server's user can still read, or the server
    would keep the previous tokens, the revoked one included.
    """
    path = Path(path)
    if not path.exists():
        return False
    lines = read_tokens_file(path).splitlines(keepends=True)
    kept: list[str] = []
    for line in lines:
        body, hash_mark, comment = line.partition("#")
        entries = body.split(";")  # a line may hold several entries, as $RECSVC_TOKENS does
        others = [e for e in entries if e.split()[:1] != [name]]
        if len(others) == len(entries):
            kept.append(line)
        elif any(e.strip() for e in others):  # the line's other clients stay
            end = "" if hash_mark else line[len(line.rstrip("\r\n")):]
            kept.append("; ".join(e.strip() for e in others if e.strip())
                        + (f" {hash_mark}{comment}" if hash_mark else end))
    if kept == lines:
        return False
    before = path.stat()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), stat.S_IMODE(before.st_mode))
            if (before.st_uid, before.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(handle.fileno(), before.st_uid, before.st_gid)
                except PermissionError:
                    pass  # not root: the file can only be ours, as it was replaceable
            handle.writelines(kept)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


# What tells a changed tokens file: a rewrite (new inode), an edit (time, size), and a change
# of mode or owner (ctime), which can make an unreadable file readable with the same content.
_GONE = (-1, -1, -1, -1)


def _stamp_of(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)


class TokenRegistry:
    """The known clients, from a tokens file and/or `$RECSVC_TOKENS`; the file is re-read when
    it changes (a broken edit keeps the previous clients and logs an error).

    The file wins for a name in both, and keeps winning once the name leaves the file: a
    `token revoke` of that name must not bring back the environment's older token for it.
    """

    def __init__(self, path: str | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.path = Path(path) if path else None
        env = os.environ if environ is None else environ
        self._from_env = parse_tokens(env.get(TOKENS_ENV, ""), TOKENS_ENV)
        self._from_file: list[Client] = []
        self._shadowed: set[str] = set()  # names the file has held: their env entries are void
        self._stamp: tuple[int, int, int, int] | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        if self.path is not None:
            if not self.path.is_file():
                what = "is not a file" if self.path.exists() else "does not exist"
                raise InvalidInput("--tokens-file", f"{self.path} {what}")
            self._load_file(strict=True)
        self.clients: tuple[Client, ...] = self._merge()
        both = sorted({c.name for c in self._from_env} & self._shadowed)
        if both:
            log.warning(
                f"{TOKENS_ENV} and the tokens file both name a client: the file's token is used; "
                f"remove the others from {TOKENS_ENV}, which would be in force again after a "
                "restart if the file's line went", extra={"clients": ",".join(both)},
            )

    def _merge(self) -> tuple[Client, ...]:
        self._shadowed.update(c.name for c in self._from_file)
        by_name = {c.name: c for c in self._from_env if c.name not in self._shadowed}
        by_name.update({c.name: c for c in self._from_file})  # the file wins
        return tuple(by_name.values())

    def _load_file(self, strict: bool) -> bool:
        """Read the file; False (error logged, previous clients kept) when it is unusable."""
        assert self.path is not None
        try:
            stamp = _stamp_of(self.path.stat())
            clients = parse_tokens(read_tokens_file(self.path), str(self.path))
        except (OSError, UnicodeDecodeError, InvalidInput) as exc:
            if strict:
                if isinstance(exc, InvalidInput):
                    raise
                raise InvalidInput("--tokens-file", f"cannot read {self.path}: {exc}") from None
            log.error("tokens file unreadable; keeping the previous tokens", extra={"error": str(exc)})
            return False
        self._from_file = clients
        self._stamp = stamp
        return True

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.path is None or now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + RELOAD_CHECK_SECONDS
            try:
                stamp = _stamp_of(self.path.stat())
            except OSError as exc:
                if self._stamp != _GONE:  # once per disappearance
                    self._stamp = _GONE
                    log.error("tokens file gone; keeping the previous tokens (empty it to revoke "
                              "every token)", extra={"error": str(exc)})
                return
            if stamp != self._stamp:
                if self._load_file(strict=False):
                    self.clients = self._merge()
                    log.info("tokens file reloaded", extra={"clients": len(self.clients)})
                else:
                    self._stamp = stamp  # logged once; read again when the file changes

    def __len__(self) -> int:
        return len(self.clients)

    def authenticate(self, token: str) -> Client | None:
        """The client holding `token`, or None. Compares with every known hash in constant
        time, so timing reveals neither which hash nor how much of one matched."""
        self._maybe_reload()
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: list[Client] = []
        for client in self.clients:
            if hmac.compare_digest(presented, client.digest):
                found.append(client)
        # One hash under two names (the file's and $RECSVC_TOKENS'): which client, which
        # role, is unknowable, so neither.
        return found[0] if len(found) == 1 else None


def bearer_token(metadata: Iterable[Any] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` metadata entry (None: absent/other)."""
    for entry in metadata or ():
        key, value = entry[0], entry[1]
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


# -- rejections -------------------------------------------------------------------------------
_denials: dict[tuple[bool, bool, grpc.StatusCode, str], grpc.RpcMethodHandler] = {}
_denials_lock = threading.Lock()


def denial(
    handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, details: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that fails every call with `code`.

    One object per (shape, code, details), so interceptors that cache per handler (metrics)
    stay bounded. `details` must not carry anything secret or per-customer.
    """
    request_streaming = bool(handler and handler.request_streaming)
    response_streaming = bool(handler and handler.response_streaming)
    key = (request_streaming, response_streaming, code, details)
    found = _denials.get(key)
    if found is not None:
        return found

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    if request_streaming and response_streaming:
        made = grpc.stream_stream_rpc_method_handler(refuse)
    elif request_streaming:
        made = grpc.stream_unary_rpc_method_handler(refuse)
    elif response_streaming:
        made = grpc.unary_stream_rpc_method_handler(refuse)
    else:
        made = grpc.unary_unary_rpc_method_handler(refuse)
    with _denials_lock:
        return _denials.setdefault(key, made)


class LogThrottle:
    """Logs a warning per reason at most every `every` seconds, with the count since the last."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, message: str, reason: str, **fields: Any) -> None:
        now = time.monotonic()
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            if now - self._last.get(reason, -1e9) < self.every:
                return
            self._last[reason] = now
            count = self._counts.pop(reason)
        log.warning(message, extra={"reason": reason, "calls": count, **fields})


class AuthInterceptor(grpc.ServerInterceptor):
    """Bearer-token authentication and the admin check (see the module docstring).

    registry None: no authentication (`--insecure-no-auth`): every caller is let in, but
    admin RPCs are refused to everyone.
    """

    def __init__(
        self,
        registry: TokenRegistry | None,
        open_prefixes: Sequence[str] = OPEN_PREFIXES,
        admin_methods: frozenset[str] = ADMIN_METHODS,
    ) -> None:
        self.registry = registry
        self.open_prefixes = tuple(open_prefixes)
        self.admin_methods = admin_methods
        self.throttle = LogThrottle()

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if method.startswith(self.open_prefixes):
            return continuation(handler_call_details)
        rpc = metrics.rpc_name(method)
        if self.registry is None:
            if method in self.admin_methods:
                return self._refuse(
                    continuation, handler_call_details, grpc.StatusCode.PERMISSION_DENIED,
                    "admin RPCs are disabled on a server run with --insecure-no-auth",
                    "admin call without auth", rpc,
                )
            return continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        client = self.registry.authenticate(token) if token is not None else None
        if client is None:
            reason = "missing token" if token is None else "unknown token"
            return self._refuse(
                continuation, handler_call_details, grpc.StatusCode.UNAUTHENTICATED,
                "a valid bearer token is required (metadata authorization: Bearer <token>)",
                reason, rpc,
            )
        if method in self.admin_methods and not client.admin:
            return self._refuse(
                continuation, handler_call_details, grpc.StatusCode.PERMISSION_DENIED,
                f"{rpc} needs an admin token", "not admin", rpc, client=client.name,
            )
        marker = _CURRENT.set(client)
        try:
            return continuation(handler_call_details)
        finally:
            _CURRENT.reset(marker)

    def _refuse(
        self,
        continuation: Continuation,
        details: grpc.HandlerCallDetails,
        code: grpc.StatusCode,
        message: str,
        reason: str,
        rpc: str,
        **fields: Any,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None  # unknown method: UNIMPLEMENTED, as without auth
        metrics.auth_rejected(reason)
        self.throttle.warn("call refused", reason, rpc=rpc, **fields)
        return denial(handler, code, message)


def registry_from(tokens_file: str, environ: Mapping[str, str] | None = None) -> TokenRegistry:
    """The registry of `--tokens-file` and `$RECSVC_TOKENS`; InvalidInput when both are empty."""
    registry = TokenRegistry(tokens_file or None, environ)
    if not len(registry):
        where = f"{tokens_file} holds no tokens" if tokens_file else "no tokens are configured"
        raise InvalidInput(
            "--tokens-file",
            f"authentication is on and {where}: create one with `recsvc token create --name "
            f"NAME --tokens-file FILE` and pass --tokens-file FILE (or set {TOKENS_ENV}), or run "
            "a local demo with --insecure-no-auth",
        )
    return registry
