"""Feature stores chosen by URL: the online cache between the trainer's bundles and the server.

    memory://[name]                 embedded, in-process (recsvc.store.memory). A named store
                                    is shared by every `open_store` of that name in the process;
                                    `memory://` alone is a fresh private store. It lives only as
                                    long as the process (publish into it inside `recsvc serve`).
    redis://[:password@]host:port/db[?prefix=rs&cluster=1&timeout=5]
    rediss://...[?ssl_ca_certs=ca.pem&ssl_certfile=..&ssl_keyfile=..&ssl_cert_reqs=required]
                                    the same over TLS (the ssl_* settings are refused on a
                                    plaintext redis:// URL rather than ignored)
    redis+cluster://[:password@]host:port[,host:port...][?prefix=rs]
                                    Redis Cluster (also `redis://...?cluster=1` or cluster=True)

    any of the above + ?hash_ids=1[&id_secret_file=PATH]
                                    customer ids are stored only as keyed hashes (HMAC-SHA256
                                    with the secret in $RECSVC_ID_SECRET or the file; see
                                    recsvc.privacy)

The Redis password comes from the URL or from `RECSVC_REDIS_PASSWORD`; it is never logged
(`mask_url` hides it) nor quoted in an error. In the URL, a password's `/`, `?`, `#` and `@`
must be percent-encoded (`%2F`, `%3F`, `%23`, `%40`): a URL with an `@` after its host part is
refused without being shown. Must not import `training` or `serving`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from recsvc.errors import InvalidInput
from recsvc.store.base import (
    ALL,
    PARTIAL,
    POPULARITY_LISTS,
    READY,
    BuyAgainList,
    FeatureStore,
    ItemCatalog,
    ItemUpdateReport,
    PublishReport,
    RecentEvent,
    StoreState,
    UserFeatures,
    UserSegment,
    VersionInfo,
)

SCHEMES = ("memory", "redis", "rediss", "redis+cluster", "rediss+cluster")

__all__ = [
    "ALL",
    "PARTIAL",
    "POPULARITY_LISTS",
    "READY",
    "SCHEMES",
    "BuyAgainList",
    "FeatureStore",
    "ItemCatalog",
    "ItemUpdateReport",
    "PublishReport",
    "RecentEvent",
    "StoreState",
    "UserFeatures",
    "UserSegment",
    "VersionInfo",
    "check_userinfo",
    "mask_url",
    "open_store",
]


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***` (safe to print and log).

    Everything between `://` and the last `@` is taken as user and password, before any URL
    parsing: a password holding `/`, `?` or `#` unencoded would otherwise end the host part
    early and be shown as a path or query. Only a user name clear of those is kept.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    userinfo, at, hostinfo = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
    if any(c in user for c in "/?#"):
        user = ""
    return f"{scheme}{separator}{user}:***@{hostinfo}"


def check_userinfo(url: str) -> None:
    """InvalidInput, quoting nothing of the URL, when an `@` comes after the host part: a
    password holding `/`, `?`, `#` or `@` unencoded, which no URL parser reads back (it would
    take part of the password for the host, port, database or a setting)."""
    rest = url.partition("://")[2]
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    if "@" in rest[min(ends, default=len(rest)) :]:
        raise InvalidInput(
            "--store",
            "the URL has an '@' after its host part, most likely a password holding '/', '?', "
            "'#' or '@': percent-encode these characters in the password ('/' as %2F, '?' as "
            "%3F, '#' as %23, '@' as %40; Python: urllib.parse.quote(password, safe='')), or "
            "pass the password in RECSVC_REDIS_PASSWORD instead; an '@' in a setting's value (a "
            "certificate path) is written %40 as well (the URL is not shown, to keep the password "
            "out of logs)",
        )


def url_parse_failure(exc: ValueError) -> str:
    """Why a URL could not be split, quoting nothing of it: the parser's own message may hold
    part of the host field, and with it of a password (`'0@127.0.0.1' does not appear to be an
    IPv4 or IPv6 address`)."""
    if "IPv" in str(exc):
        return ("a '[' or ']' outside an IPv6 address (in a password, percent-encode them: "
                "%5B, %5D)")
    return "its host part cannot be read (percent-encode reserved characters in a password)"


def open_store(url: str, **options: Any) -> FeatureStore:
    """Open the feature store at `url` (see the module docstring for the schemes).

    options: implementation settings, e.g. `cluster=True`, `prefix="rs"`, `password=...`,
    `socket_timeout=1.0`, `recent_max=50`, `recent_ttl=86400` (Redis), `hash_ids=True`,
    `id_secret_file=PATH` (any store); overriding URL queries.
    Raises InvalidInput for an unknown scheme or a malformed URL (or hash_ids without a
    secret), StoreUnavailable when a Redis server cannot be reached.
    """
    if not url or "://" not in url:
        raise InvalidInput("--store", f"'{mask_url(url)}' is not a store URL (memory:// or redis://...)")
    check_userinfo(url)  # first: later errors would quote what a misread password leaves
    scheme = url.split("://", 1)[0].lower()
    _check_query(url, scheme)
    hasher, secret_file = _id_hasher(url, options)
    store: FeatureStore
    if scheme == "memory":
        from recsvc.store.memory import MemoryStore

        store = MemoryStore.open(url, **options)
    elif scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from recsvc.store.redis import RedisStore

        store = RedisStore.from_url(url, **options)
    else:
        raise InvalidInput(
            "--store", f"unknown store scheme '{scheme}://' (one of {', '.join(s + '://' for s in SCHEMES)})"
        )
    if hasher is not None:
        store.enable_id_hashing(hasher)
    elif secret_file:  # where a forget finds the secret of events hashed while it was on
        store.id_secret_file = str(secret_file)
    return store


_COMMON_QUERY = ("hash_ids", "id_secret_file")
# TLS settings a Redis URL may carry (recsvc.store.redis passes them to redis-py)
TLS_QUERY = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
_REDIS_QUERY = ("prefix", "cluster", "timeout", "db", *TLS_QUERY)


def _check_query(url: str, scheme: str) -> None:
    """InvalidInput for a URL setting this store does not know: a typo (`?hash_id=1`) must not
    quietly leave customer ids unhashed."""
    try:
        query = urlsplit(url).query
    except ValueError as exc:
        raise InvalidInput("--store", f"malformed URL '{mask_url(url)}': {url_parse_failure(exc)}") from None
    known = _COMMON_QUERY + (_REDIS_QUERY if scheme.startswith("redis") else ())
    for name in parse_qs(query, keep_blank_values=True):
        if name not in known:
            raise InvalidInput(
                "--store", f"unknown URL setting '{name}' (known for {scheme}://: {', '.join(known)})"
            )


def _id_hasher(url: str, options: dict[str, Any]) -> tuple[Any, str | None]:
    """The IdHasher asked for by `hash_ids` (option or URL query), else None, and the
    `id_secret_file` given (option or URL query) either way; pops the options."""
    try:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    except ValueError:
        query = {}
    flag = options.pop("hash_ids", query.get("hash_ids", ""))
    secret_file = options.pop("id_secret_file", query.get("id_secret_file")) or None
    if str(flag).lower() not in ("1", "true", "yes", "on"):
        if str(flag).lower() not in ("", "0", "false", "no", "off", "none"):
            raise InvalidInput("hash_ids", f"'{flag}' is not 1 or 0")
        return None, secret_file
    from recsvc.privacy import hasher_from_env

    return hasher_from_env(secret_file), secret_file
