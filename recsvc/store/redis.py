"""The Redis feature store (`redis://`, `rediss://`, `redis+cluster://`): single node or Cluster.

Key layout (store layout 1; `rs` is the prefix, `?prefix=` changes it; `{...}` is the hash tag
that decides the Redis Cluster slot):

    rs:{g}:current           string   id of the current version (switched by one Lua script)
    rs:{g}:switches          string   counter bumped by every switch of `current`
    rs:{g}:switched          hash     version id -> the counter at its last switch to current
    rs:{g}:versions          hash     version id -> JSON meta (status partial|ready, created_at,
                                      published_at, counts, components, layout)
    rs:{g}:lock              string   the publish lock (JSON owner, expires unless refreshed)
    rs:{g}:forgotten         hash     user id -> epoch s of the forget request
    rs:{g}:items             hash     item id -> item-metadata override (codec.encode_item_update)
    rs:{g}:items_rev         string   counter bumped by every item update
    rs:{g}:rt                channel  pub/sub: the user key of every recorded real-time event
                                      (single node; `EventWatch` follows it)
    rs:{v:<version>}:data    hash     version-wide blobs: manifest, items:ids, items:category,
                                      items:title, items:price, items:in_stock, item_factors,
                                      file:rules/<name>, pop:<list>:names, pop:<list>:g:<group>
                                      (blobs over 4 MiB are split into `<name>\\0<i>` fields)
    rs:{u<b>}:v:<version>    hash     user id -> user record (codec), b = crc32(user id) % 4096
    rs:{u<b>}:rt:<user id>   list     the user's recent real-time events (items by id), newest first, capped,
                                      expiring (not versioned)
    rs:{u<b>}:rb:<user id>   list     the same user's recent purchases alone (views cannot push them
                                      out of it), capped and expiring alike
    rs:{i<b>}:v:<version>    hash     item index -> similar-items list, b = item index // 256

Users are bucketed into 4096 hashes per version rather than one key each: a top-level key
costs ~70 bytes of overhead, a hash field ~40. A user's record and real-time list share the tag
`{u<b>}`, so `user_features(..., recent=N)` is one pipeline to one node, one round trip. The
global keys share `{g}`, so the version switch is one atomic script in a cluster too.

Passwords come from the URL or `RECSVC_REDIS_PASSWORD` and never reach a log (`self.url` is
masked).

Must not import `training` or `serving`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import select
import socket
import struct
import threading
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import redis
import redis.cluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError
from redis.retry import Retry

from recsvc.errors import InvalidInput, NotFound, StoreUnavailable
from recsvc.store import TLS_QUERY
from recsvc.store.base import PARTIAL, StoreState
from recsvc.store.engine import StoreEngine, with_kept

log = logging.getLogger(__name__)

LAYOUT = 1
USER_BUCKETS = 4096
ITEMS_PER_BUCKET = 256
CHUNK = 4 << 20  # blobs above this go into several hash fields
LOCK_TTL_MS = 60_000
PASSWORD_ENV = "RECSVC_REDIS_PASSWORD"
_BLOB_WHOLE = b"\x00"
_BLOB_CHUNKED = b"\x01"

# Switch `current` and record the switch's sequence number (`switch_order`) in one step.
_SWITCH = """
local meta = redis.call('HGET', KEYS[1], ARGV[1])
if not meta then return 0 end
if cjson.decode(meta)['status'] ~= 'ready' then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], redis.call('INCR', KEYS[3]))
return 1
"""
# Retire a version before its keys go: refuse if it is current, else mark it partial in the
# same step, so that a concurrent switch (rollback) refuses it and a drop killed midway is
# finished by the next publish's clean-up of partial versions.
_RETIRE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then return 0 end
local meta = redis.call('HGET', KEYS[1], ARGV[1])
if not meta then return 1 end
local decoded = cjson.decode(meta)
decoded['status'] = ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(decoded))
return 1
"""
_LOCK_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Item-metadata overrides: written only if the revision is still the one the caller merged
# against (compare-and-set), so two concurrent `update_items` never lose each other's fields.
_ITEMS_PUT = """
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return -1 end
for start = 2, #ARGV, 2000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, start, math.min(start + 1999, #ARGV)))
end
return redis.call('INCR', KEYS[2])
"""
_LOCK_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

T = TypeVar("T")

# Error replies that say the server cannot serve now (not that the command was wrong):
# refused credentials; a replica after a failover (READONLY) or one whose master is down;
# memory full (OOM); snapshots failing (MISCONF); a script running too long (BUSY); a
# cluster slot moving (TRYAGAIN); too few replicas for a write.
_AUTH_REPLIES = frozenset({"NOAUTH", "WRONGPASS", "NOPERM"})
_UNAVAILABLE_REPLIES = _AUTH_REPLIES | {
    "READONLY", "MASTERDOWN", "OOM", "MISCONF", "BUSY", "TRYAGAIN", "NOREPLICAS", "LOADING",
}


def _reply_code(exc: ResponseError) -> str:
    code = getattr(exc, "status_code", None)  # set by redis-py's parser for prefixed replies
    return str(code) if code else str(exc).split(" ", 1)[0]


def _guard(method: Callable[..., T]) -> Callable[..., T]:
    """Map connection problems and "cannot serve now" replies to StoreUnavailable (with the
    masked URL, never a password); other errors are bugs and propagate."""

    @functools.wraps(method)
    def wrapper(self: RedisStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, ClusterError) as exc:
            raise StoreUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        except ResponseError as exc:
            code = _reply_code(exc)
            if code in _AUTH_REPLIES:
                raise StoreUnavailable(f"{self.url}: authentication failed") from exc
            if code in _UNAVAILABLE_REPLIES:
                raise StoreUnavailable(f"{self.url}: {code}: {exc}") from exc
            raise

    return wrapper


def user_bucket(user_id: str) -> int:
    return zlib.crc32(user_id.encode("utf-8", "surrogatepass")) % USER_BUCKETS


def parse_url(url: str, **options: Any) -> dict[str, Any]:
    """Connection settings from a store URL plus options (options win).

    Raises InvalidInput for a malformed URL; the message never quotes the user or password.
    """
    from recsvc.store import check_userinfo, url_parse_failure

    check_userinfo(url)
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    tls = scheme.startswith("rediss")
    cluster = scheme.endswith("+cluster")
    try:
        parts = urlsplit(f"redis://{rest}")
    except ValueError as exc:
        raise InvalidInput("--store", f"malformed URL: {url_parse_failure(exc)}") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    netloc = parts.netloc
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if secret else None
    nodes: list[tuple[str, int]] = []
    for host in (hosts or "localhost:6379").split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "6379")
        try:
            number = int(port)
        except ValueError:
            raise InvalidInput("--store", f"bad port in '{host}'") from None
        if not 0 < number <= 65535:
            raise InvalidInput("--store", f"port {number} in '{host}' is not between 1 and 65535")
        nodes.append((name.strip("[]") or "localhost", number))
    path = parts.path.strip("/")
    given_db = path or query.get("db", "0")
    try:
        db = int(given_db)
    except ValueError:
        raise InvalidInput("--store", f"database '{given_db}' is not a number") from None
    if db < 0:
        raise InvalidInput("--store", f"database {db} is negative")
    flag = str(options.pop("cluster", query.get("cluster", ""))).lower()
    if flag not in ("", "1", "true", "yes", "on", "0", "false", "no", "off"):
        raise InvalidInput("cluster", f"'{flag}' is not 1 or 0")
    cluster = cluster or flag in ("1", "true", "yes", "on")
    prefix = str(options.pop("prefix", query.get("prefix", "rs")))
    if not prefix or any(c in prefix for c in "{}: "):
        raise InvalidInput("prefix", f"'{prefix}' must be non-empty without braces, colons or spaces")
    if cluster and db != 0:
        raise InvalidInput("--store", "Redis Cluster has only database 0")
    asked = [name for name in TLS_QUERY if name in query or name in options]
    if asked and not tls:  # redis-py would ignore them and connect in plaintext
        secure = scheme.replace("redis", "rediss", 1)
        raise InvalidInput(
            "--store",
            f"{', '.join(asked)} {'is a TLS setting' if len(asked) == 1 else 'are TLS settings'}, "
            f"but a {scheme}:// URL connects in plaintext: use {secure}:// for TLS",
        )
    for name in TLS_QUERY:  # TLS settings may come in the URL, e.g. ?ssl_ca_certs=/etc/ca.pem
        if name in query and name not in options:
            value: Any = query[name]
            if name == "ssl_check_hostname":
                value = value.lower() in ("1", "true", "yes", "on")
            options[name] = value
    return {
        "nodes": nodes,
        "tls": tls,
        "cluster": cluster,
        "db": db,
        "username": username,
        "password": options.pop("password", None) or password or os.environ.get(PASSWORD_ENV) or None,
        "prefix": prefix,
        "socket_timeout": _timeout(options.pop("socket_timeout", query.get("timeout", 5.0))),
        "options": options,
    }


def _timeout(value: Any) -> float:
    """The socket timeout in seconds: a finite number above 0."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InvalidInput("timeout", f"'{value}' is not a number of seconds") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidInput("timeout", f"must be a number of seconds above 0, got {value!r}")
    return seconds


class RedisStore(StoreEngine):
    """FeatureStore on Redis or Redis Cluster (see the module docstring for the keys)."""

    def __init__(
        self, client: Any, url: str, prefix: str = "rs", cluster: bool = False, **options: Any
    ) -> None:
        super().__init__(url, **options)
        self.client = client
        self.prefix = prefix
        self.cluster = cluster
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._switch = client.register_script(_SWITCH)
        self._retire = client.register_script(_RETIRE)
        self._lock_refresh = client.register_script(_LOCK_REFRESH)
        self._lock_release = client.register_script(_LOCK_RELEASE)
        self._items_put = client.register_script(_ITEMS_PUT)
        self._lock_value: str | None = None
        self._scan_meta: dict[str, tuple[int, int]] = {}  # version -> (buckets, users/bucket)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        from recsvc.store import mask_url

        settings = parse_url(url, **options)
        masked = mask_url(url)
        # fail fast: a server answering storefronts cannot wait out long backoffs
        retries = int(settings["options"].pop("retries", 2))
        common: dict[str, Any] = {
            "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries),
            "username": settings["username"],
            "password": settings["password"],
            "socket_timeout": settings["socket_timeout"],
            "socket_connect_timeout": settings["socket_timeout"],
            "ssl": settings["tls"],
        }
        engine_options = {
            k: settings["options"].pop(k)
            for k in ("scores", "factors", "recent_max", "recent_ttl")
            if k in settings["options"]
        }
        common.update(settings["options"])  # e.g. ssl_ca_certs, ssl_cert_reqs
        try:
            if settings["cluster"]:
                nodes = [redis.cluster.ClusterNode(h, p) for h, p in settings["nodes"]]  # type: ignore[no-untyped-call]
                client: Any = redis.cluster.RedisCluster(startup_nodes=nodes, **common)
            else:
                host, port = settings["nodes"][0]
                client = redis.Redis(host=host, port=port, db=settings["db"], **common)
            client.ping()
        except RedisClusterException as exc:  # e.g. a cluster URL for a single-node server
            reason = " ".join(str(exc).split())[:200]
            raise StoreUnavailable(f"cannot reach {masked} as a Redis Cluster: {reason}") from None
        except (RedisError, OSError) as exc:
            reason = "authentication failed" if "AUTH" in str(exc).upper() or "WRONGPASS" in str(exc) else type(exc).__name__
            raise StoreUnavailable(f"cannot reach {masked}: {reason}") from None
        return cls(client, masked, settings["prefix"], settings["cluster"], **engine_options)

    # -- keys -------------------------------------------------------------------------------

    def _g(self, name: str) -> str:
        return f"{self.prefix}:{{g}}:{name}"

    def _data(self, version: str) -> str:
        return f"{self.prefix}:{{v:{version}}}:data"

    def _users(self, version: str, bucket: int) -> str:
        return f"{self.prefix}:{{u{bucket}}}:v:{version}"

    def _recent(self, user_id: str) -> str:
        return f"{self.prefix}:{{u{user_bucket(user_id)}}}:rt:{user_id}"

    def _bought(self, user_id: str) -> str:
        return f"{self.prefix}:{{u{user_bucket(user_id)}}}:rb:{user_id}"

    def _items(self, version: str, bucket: int) -> str:
        return f"{self.prefix}:{{i{bucket}}}:v:{version}"

    def _pipe(self) -> Any:
        return self.client.pipeline(transaction=False)

    # -- global state -----------------------------------------------------------------------

    @_guard
    def current_version(self) -> str | None:
        value = self.client.get(self._g("current"))
        return value.decode() if value is not None else None

    @_guard
    def state(self) -> StoreState:
        current, revision = self.client.mget([self._g("current"), self._g("items_rev")])
        return StoreState(current.decode() if current else None, int(revision or 0))

    @_guard
    def version_table(self) -> dict[str, dict[str, Any]]:
        raw = self.client.hgetall(self._g("versions"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    @_guard
    def put_version_meta(self, version: str, meta: dict[str, Any]) -> None:
        self.client.hset(self._g("versions"), version, json.dumps(meta))

    @_guard
    def switch_current(self, version: str) -> None:
        keys = [self._g("versions"), self._g("current"), self._g("switches"), self._g("switched")]
        if not self._switch(keys=keys, args=[version]):
            raise NotFound(f"version '{version}' is not a complete stored version")

    @_guard
    def switch_order(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(self._g("switched")).items()}

    @_guard
    def _publish_lock_acquire(self, version: str) -> None:
        key = self._g("lock")
        value = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), **_process_identity(),
                            "version": version, "token": self._token})
        for _ in range(2):
            if self.client.set(key, value, nx=True, px=LOCK_TTL_MS):
                self._lock_value = value
                return
            held = self.client.get(key)
            if held is None:
                continue
            try:
                owner = json.loads(held)
            except json.JSONDecodeError:
                owner = {}
            if _owner_is_dead(owner):
                log.info("taking over the publish lock of a dead process on this host")
                self._lock_release(keys=[key], args=[held])
                continue
            raise InvalidInput(
                "publish",
                f"another publish ({owner.get('version')}, pid {owner.get('pid')} on "
                f"{owner.get('host')}) holds the store's lock; it expires {LOCK_TTL_MS // 1000}s "
                "after that publish stops",
            )
        raise InvalidInput("publish", "could not take the store's publish lock")

    @_guard
    def refresh_publish_lock(self, version: str) -> None:
        """Extend the lock; InvalidInput when it is no longer ours (it expired while this
        publish stalled, and another may have taken it): stop before switching anything."""
        if self._lock_value is None:
            return
        if not self._lock_refresh(keys=[self._g("lock")], args=[self._lock_value, LOCK_TTL_MS]):
            self._lock_value = None
            raise InvalidInput(
                "publish",
                f"the store's publish lock expired while {version} was written (another publish "
                "may have started); stopped before switching, the partial version is removed "
                "by the next publish",
            )

    @_guard
    def _publish_lock_release(self, version: str) -> None:
        if self._lock_value is not None:
            self._lock_release(keys=[self._g("lock")], args=[self._lock_value])
            self._lock_value = None

    # -- version data -----------------------------------------------------------------------

    def layout_info(self, n_items: int) -> dict[str, Any]:
        return {
            "layout": LAYOUT,
            "user_buckets": USER_BUCKETS,
            "item_buckets": -(-n_items // ITEMS_PER_BUCKET),
        }

    @_guard
    def put_blobs(self, version: str, blobs: dict[str, bytes]) -> None:
        key = self._data(version)
        pipe = self._pipe()
        queued = 0
        for name, blob in blobs.items():
            if len(blob) <= CHUNK:
                pipe.hset(key, name, _BLOB_WHOLE + blob)
                queued += len(blob)
            else:
                chunks = [blob[i : i + CHUNK] for i in range(0, len(blob), CHUNK)]
                pipe.hset(key, name, _BLOB_CHUNKED + struct.pack("<I", len(chunks)))
                for index, chunk in enumerate(chunks):
                    pipe.hset(key, f"{name}\x00{index}", chunk)
                    queued += len(chunk)
                    if queued > 4 * CHUNK:
                        pipe.execute()
                        queued = 0
        pipe.execute()

    @_guard
    def get_blob(self, version: str, name: str) -> bytes | None:
        key = self._data(version)
        head = self.client.hget(key, name)
        if head is None:
            return None
        if head[:1] == _BLOB_WHOLE:
            return bytes(head[1:])
        (count,) = struct.unpack("<I", head[1:5])
        chunks = self.client.hmget(key, [f"{name}\x00{i}" for i in range(count)])
        if any(c is None for c in chunks):
            raise StoreUnavailable(f"{self.url}: blob {name} of {version} is incomplete")
        return b"".join(chunks)

    @_guard
    def blob_names(self, version: str) -> list[str]:
        names = (k.decode() for k in self.client.hkeys(self._data(version)))
        return [n for n in names if "\x00" not in n]

    @_guard
    def put_items(self, version: str, records: list[tuple[int, bytes]]) -> None:
        grouped: dict[int, dict[str, bytes]] = defaultdict(dict)
        for index, record in records:
            grouped[index // ITEMS_PER_BUCKET][str(index)] = record
        pipe = self._pipe()
        for bucket, mapping in grouped.items():
            pipe.hset(self._items(version, bucket), mapping=mapping)
        pipe.execute()

    @_guard
    def get_item(self, version: str, item_index: int) -> bytes | None:
        value: bytes | None = self.client.hget(self._items(version, item_index // ITEMS_PER_BUCKET), str(item_index))
        return value

    def _item_buckets(self, version: str) -> int:
        meta = self.version_table().get(version, {})
        layout = meta.get("layout", {})
        return int(layout.get("item_buckets", -(-int(meta.get("n_items", 0)) // ITEMS_PER_BUCKET)))

    def _hlens(self, keys: list[str]) -> list[int]:
        pipe = self._pipe()
        for key in keys:
            pipe.hlen(key)
        return [int(n) for n in pipe.execute()] if keys else []

    @_guard
    def count_items(self, version: str) -> int:
        return sum(self._hlens([self._items(version, b) for b in range(self._item_buckets(version))]))

    def user_write_order(self, user_ids: Sequence[str]) -> np.ndarray:
        buckets = np.fromiter((user_bucket(u) for u in user_ids), dtype=np.int32, count=len(user_ids))
        return np.argsort(buckets, kind="stable").astype(np.int64)

    @_guard
    def put_users(self, version: str, user_ids: list[str], records: list[bytes]) -> None:
        grouped: dict[int, dict[str, bytes]] = defaultdict(dict)
        for user_id, record in zip(user_ids, records, strict=True):
            grouped[user_bucket(user_id)][user_id] = record
        pipe = self._pipe()
        for bucket, mapping in grouped.items():
            pipe.hset(self._users(version, bucket), mapping=mapping)
        pipe.execute()

    @_guard
    def get_users(
        self, version: str, user_ids: Sequence[str], recent: int
    ) -> list[tuple[bytes | None, list[bytes]]]:
        if not user_ids:
            return []
        pipe = self._pipe()
        for user_id in user_ids:
            pipe.hget(self._users(version, user_bucket(user_id)), user_id)
            if recent > 0:
                pipe.lrange(self._recent(user_id), 0, recent - 1)
                pipe.lrange(self._bought(user_id), 0, -1)
        replies = pipe.execute()
        if recent > 0:
            return [(replies[3 * i], with_kept(list(replies[3 * i + 1]), replies[3 * i + 2]))
                    for i in range(len(user_ids))]
        return [(reply, []) for reply in replies]

    @_guard
    def scan_user_records(
        self, version: str, cursor: int, count: int
    ) -> tuple[int | None, list[tuple[str, bytes]]]:
        # The cursor is a user bucket: whole buckets (HGETALL, ~50 users each at 200k users)
        # in one pipelined round trip, as many as make about `count` users.
        if cursor == 0 or version not in self._scan_meta:
            meta = self.version_table().get(version)
            if meta is None:
                return None, []
            users = int(meta.get("n_users", 0) or 0)
            buckets = int(meta.get("layout", {}).get("user_buckets", USER_BUCKETS))
            self._scan_meta[version] = (buckets, max(1, users // max(1, buckets)))
        buckets, per_bucket = self._scan_meta.get(version, (USER_BUCKETS, 1))
        if cursor >= buckets:
            return None, []
        end = min(buckets, cursor + max(1, count // per_bucket))
        pipe = self._pipe()
        for bucket in range(cursor, end):
            pipe.hgetall(self._users(version, bucket))
        records = [
            (key.decode("utf-8", "surrogatepass"), value)
            for reply in pipe.execute()
            for key, value in reply.items()
        ]
        return (end if end < buckets else None), records

    @_guard
    def delete_users(self, version: str, user_ids: Sequence[str]) -> int:
        pipe = self._pipe()
        for user_id in user_ids:
            pipe.hdel(self._users(version, user_bucket(user_id)), user_id)
        return int(sum(pipe.execute())) if user_ids else 0

    @_guard
    def count_users(self, version: str) -> int:
        return sum(self._hlens([self._users(version, b) for b in range(USER_BUCKETS)]))

    @_guard
    def count_keys(self, version: str) -> int:
        keys = [self._users(version, b) for b in range(USER_BUCKETS)]
        keys += [self._items(version, b) for b in range(self._item_buckets(version))]
        keys.append(self._data(version))
        return sum(n > 0 for n in self._hlens(keys))

    @_guard
    def drop_version(self, version: str, meta: dict[str, Any]) -> None:
        if not self._retire(keys=[self._g("versions"), self._g("current")], args=[version, PARTIAL]):
            raise InvalidInput("version", f"'{version}' is current")
        layout = meta.get("layout", {})
        user_buckets = int(layout.get("user_buckets", USER_BUCKETS))
        item_buckets = int(layout.get("item_buckets", -(-int(meta.get("n_items", 0)) // ITEMS_PER_BUCKET)))
        pipe = self._pipe()
        # UNLINK frees the memory in a Redis background thread; one key per call (cluster slots)
        pipe.unlink(self._data(version))
        for bucket in range(user_buckets):
            pipe.unlink(self._users(version, bucket))
        for bucket in range(item_buckets):
            pipe.unlink(self._items(version, bucket))
        pipe.execute()
        self.client.hdel(self._g("versions"), version)
        self.client.hdel(self._g("switched"), version)
        self._forget_cache(version)

    # -- real-time, forget, item updates ----------------------------------------------------

    @_guard
    def push_event(self, user_id: str, event: bytes, kept: bool = False) -> None:
        pipe = self._pipe()
        for key in (self._recent(user_id), self._bought(user_id)) if kept else (self._recent(user_id),):
            pipe.lpush(key, event)
            pipe.ltrim(key, 0, self.recent_max - 1)
            pipe.expire(key, self.recent_ttl)
        if not self.cluster:  # tells every EventWatch (servers) this user has live events
            pipe.publish(self._g("rt"), user_id)
        pipe.execute()

    @_guard
    def read_events(self, user_id: str, limit: int) -> list[bytes]:
        pipe = self._pipe()
        pipe.lrange(self._recent(user_id), 0, limit - 1)
        pipe.lrange(self._bought(user_id), 0, -1)
        newest, kept = pipe.execute()
        return with_kept(list(newest), kept)

    @_guard
    def delete_events(self, user_id: str) -> None:
        self.client.delete(self._recent(user_id), self._bought(user_id))

    @_guard
    def add_forgotten(self, user_id: str, ts: float) -> None:
        self.client.hsetnx(self._g("forgotten"), user_id, repr(ts))

    @_guard
    def forgotten_users(self) -> list[str]:
        raw = self.client.hgetall(self._g("forgotten"))
        pairs = sorted((float(v), k.decode()) for k, v in raw.items())
        return [user for _, user in pairs]

    @_guard
    def put_item_updates(self, updates: dict[str, bytes], revision: int) -> int | None:
        args: list[Any] = [revision]
        for item_id, raw in updates.items():
            args += [item_id, raw]
        written = int(self._items_put(keys=[self._g("items"), self._g("items_rev")], args=args))
        return None if written < 0 else written

    @_guard
    def item_updates(self) -> dict[str, bytes]:
        return {k.decode(): v for k, v in self.client.hgetall(self._g("items")).items()}

    @_guard
    def ping(self) -> None:
        self.client.ping()

    def watch_events(self, stale_after: float = 0.1) -> EventWatch | None:
        """A started `EventWatch` over this store (None on Redis Cluster: not supported)."""
        if self.cluster:
            return None
        watch = EventWatch(self, stale_after)
        watch.start()
        return watch

    def close(self) -> None:
        try:
            self.client.close()
        except RedisError:
            pass


class _CountingPubSub(redis.client.PubSub):
    """A PubSub that counts its (re)connections: redis-py re-subscribes by itself after a
    dropped connection, and messages published meanwhile are lost, so a watch must know."""

    connects = 0

    def on_connect(self, connection: Any) -> None:
        self.connects += 1
        super().on_connect(connection)


class EventWatch:
    """Which users may have real-time events, followed from the `rs:{g}:rt` channel.

    `RedisStore.push_event` publishes the user key of every event it records. The watch keeps
    key -> when its list expires at the latest (now + recent_ttl, as the list's EXPIRE), so a
    server can skip reading the real-time list of a user who has none: `quiet(user_id)` True.

    Correctness across servers: an event recorded through any process is published in the
    same pipeline as its LPUSH; Redis writes the message to every subscriber before (or with)
    the recording client's reply, so by the time a client that saw RecordEvent succeed asks
    another server, the message is in that server's socket buffer: `quiet` reads pending
    messages first (one non-blocking poll when there are none). The set is only trusted while
    `ready`: after subscribing it is rebuilt by SCAN of the real-time keys (messages arriving
    meanwhile are kept); a dropped or re-established connection, or a heartbeat PING not
    answered within `stale_after` seconds, makes it untrusted (every user "may have events",
    so callers read the store as before and see its failures) until rebuilt.
    """

    HEARTBEAT = 0.05  # seconds between PINGs on the subscriber connection
    SWEEP = 60.0  # seconds between sweeps of expired keys

    def __init__(self, store: RedisStore, stale_after: float = 0.1) -> None:
        self.store = store
        self.channel = store._g("rt")
        self.stale_after = max(float(stale_after), self.HEARTBEAT * 2)
        self._live: dict[str, float] = {}
        self._lock = threading.Lock()
        self._pubsub: _CountingPubSub | None = None
        self._connects = 0  # connections the set was built for
        self._ready = False
        self._ping_sent: float | None = None  # monotonic time of the unanswered PING
        self._probe: Callable[[], bool] = lambda: True  # `_socket_probe` of socket `_probed`
        self._probed: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rebuilds = 0

    def forget(self, user_id: str) -> None:
        """Drop a forgotten customer's key from the live set (their events are gone)."""
        with self._lock:
            self._live.pop(self.store.user_key(user_id), None)

    # -- the request path ---------------------------------------------------------------------
    def quiet(self, user_id: str) -> bool:
        """True when the user certainly has no real-time events (no store read needed)."""
        if not self._ready:
            return False
        # Never wait long: the thread may hold the lock while redis-py reconnects. (Not
        # waiting at all measured worse: the store read that replaces the wait costs more.)
        if not self._lock.acquire(timeout=0.005):
            return False
        try:
            pubsub = self._pubsub
            if pubsub is None or not self._trusted(pubsub):
                return False
            try:
                if self._pending(pubsub):
                    self._drain(pubsub)
            except (RedisError, OSError, ValueError):
                self._ready = False
                return False
            if not self._trusted(pubsub):
                return False
            key = self.store.user_key(user_id)
            until = self._live.get(key)
            if until is None:
                return True
            if until < time.monotonic():
                del self._live[key]
                return True
            return False
        finally:
            self._lock.release()

    @property
    def ready(self) -> bool:
        return self._ready

    def _trusted(self, pubsub: _CountingPubSub) -> bool:
        if not self._ready or pubsub.connects != self._connects:
            return False
        sent = self._ping_sent
        return sent is None or time.monotonic() - sent < self.stale_after

    def _pending(self, pubsub: _CountingPubSub) -> bool:
        """Whether the subscriber socket has bytes waiting or was closed; call with the lock.

        After a `_drain` the parser's buffer holds no complete message, so anything new is on
        the socket: `_socket_probe` looks without a read (redis-py's `can_read` changed the
        socket timeout twice and raised inside a failed recv) and, on Linux, without letting
        go of the GIL (a request thread that does waits for it behind the other threads).
        """
        connection = pubsub.connection
        if connection is None:
            return False
        sock = getattr(connection, "_sock", None)
        if sock is None:
            return bool(connection.can_read(timeout=0))
        if self._probed is not sock:
            self._probe = _socket_probe(sock)
            self._probed = sock
        return bool(self._probe())

    def _drain(self, pubsub: _CountingPubSub) -> None:
        """Apply every message already received (never blocks); call with the lock held."""
        ttl = float(self.store.recent_ttl)
        while True:
            message = pubsub.get_message(timeout=0)
            if message is None:
                return
            kind = message.get("type")
            if kind == "message":
                data = message["data"]
                key = data.decode("utf-8", "surrogatepass") if isinstance(data, bytes) else str(data)
                self._live[key] = time.monotonic() + ttl
            elif kind == "pong":
                self._ping_sent = None

    # -- the background thread ----------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="event-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            self._close()

    def _close(self) -> None:
        self._ready = False
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except (RedisError, OSError):
                pass
            self._pubsub = None

    def _connect(self) -> None:
        """Subscribe, then rebuild the set from the keys (messages meanwhile are kept)."""
        client = self.store.client
        pubsub = _CountingPubSub(
            client.connection_pool, event_dispatcher=getattr(client, "_event_dispatcher", None)
        )
        pubsub.subscribe(self.channel)
        deadline = time.monotonic() + 5.0
        live: dict[str, float] = {}
        confirmed = False
        while not confirmed:  # the subscription is active once Redis confirms it
            if time.monotonic() > deadline:
                pubsub.close()
                raise redis.TimeoutError("no subscribe confirmation")
            message = pubsub.get_message(timeout=0.1)
            confirmed = message is not None and message.get("type") == "subscribe"
        until = time.monotonic() + float(self.store.recent_ttl)
        prefix = f"{self.store.prefix}:{{u"
        for raw in client.scan_iter(match=f"{self.store.prefix}:{{u*}}:rt:*", count=1000):
            name = raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else str(raw)
            head, _, key = name.partition("}:rt:")
            if head.startswith(prefix) and key:
                live[key] = until
        with self._lock:
            self._pubsub = pubsub
            self._connects = pubsub.connects
            self._live = live
            self._drain(pubsub)  # events published while scanning
            self._ping_sent = None
            self._ready = True
        self.rebuilds += 1
        log.info("event watch ready", extra={"users_with_events": len(live)})

    def _run(self) -> None:
        last_ping = last_sweep = time.monotonic()
        while not self._stop.is_set():
            try:
                if self._pubsub is None:
                    self._connect()
                with self._lock:
                    pubsub = self._pubsub
                    if pubsub is None:
                        continue
                    if self._pending(pubsub):  # every 10 ms: a poll, not a parser round
                        self._drain(pubsub)
                    now = time.monotonic()
                    if pubsub.connects != self._connects or not self._ready:
                        raise redis.ConnectionError("subscriber connection re-established or failed")
                    if self._ping_sent is not None and now - self._ping_sent > 10 * self.stale_after:
                        raise redis.TimeoutError("subscriber connection not answering")
                    if self._ping_sent is None and now - last_ping >= self.HEARTBEAT:
                        pubsub.ping()
                        self._ping_sent = last_ping = now
                    if now - last_sweep > self.SWEEP:
                        self._live = {k: t for k, t in self._live.items() if t >= now}
                        last_sweep = now
            except (RedisError, OSError, ValueError) as exc:
                log.warning("event watch lost its subscription", extra={"error": type(exc).__name__})
                with self._lock:
                    self._close()
                self._stop.wait(0.2)
                continue
            self._stop.wait(0.01)


_TCP_ESTABLISHED = 1  # tcp_info.tcpi_state (Linux)


def _socket_probe(sock: socket.socket) -> Callable[[], bool]:
    """A check: unread bytes on `sock`, or its peer closed it (or reset it).

    On Linux: ioctl FIONREAD and the TCP state from TCP_INFO, neither of which releases the
    GIL (a poll would, and under load a request thread then waits for it behind the others).
    Elsewhere, or on a non-TCP socket: poll with a zero timeout.
    """
    fd = sock.fileno()
    unread = bytearray(4)
    try:
        import fcntl
        import termios

        fcntl.ioctl(fd, termios.FIONREAD, unread, True)
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)

        def probe() -> bool:
            fd = sock.fileno()  # -1 once closed: the ioctl raises OSError (the watch rebuilds)
            fcntl.ioctl(fd, termios.FIONREAD, unread, True)
            if any(unread):
                return True
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != _TCP_ESTABLISHED

        return probe
    except (ImportError, AttributeError, OSError):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        return lambda: bool(poller.poll(0))


def _process_identity(pid: int | None = None) -> dict[str, str]:
    """What tells a process apart beyond its pid (Linux): its pid namespace (containers that
    share a hostname have their own) and its start time (a pid is reused after a death).
    Empty where /proc does not say."""
    where = "self" if pid is None else str(pid)
    identity: dict[str, str] = {}
    try:
        identity["pidns"] = os.readlink(f"/proc/{where}/ns/pid")
    except OSError:
        pass
    try:
        with open(f"/proc/{where}/stat", encoding="ascii") as stat:
            identity["started"] = stat.read().rsplit(")", 1)[1].split()[19]  # field 22: starttime
    except (OSError, IndexError):
        pass
    return identity


def _owner_is_dead(owner: dict[str, Any]) -> bool:
    """Whether a lock's owner is a process of this host, seen from here, that is gone: same
    hostname and (when both recorded one) the same pid namespace, and its pid is not running
    or now belongs to a process started at another time. A process in another container with
    the same hostname is never judged dead from here."""
    if owner.get("host") != socket.gethostname():
        return False
    here = _process_identity()
    if "pidns" in here and owner.get("pidns", here["pidns"]) != here["pidns"]:
        return False
    pid = int(owner.get("pid", 0) or 0)
    if not _alive(pid):
        return True
    started = owner.get("started")
    return started is not None and _process_identity(pid).get("started", started) != started


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
