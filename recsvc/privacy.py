"""Customer ids as keyed hashes: what the feature store keeps when `hash_ids` is on.

With `?hash_ids=1` on a store URL (or `open_store(url, hash_ids=True)`), the store never holds
a customer id in clear: user records, real-time event lists and the forget list are keyed by
`IdHasher.user_key(user_id)`, a truncated HMAC-SHA256 of the id under a secret the shop keeps
outside the cache (`RECSVC_ID_SECRET`, or a file named by `RECSVC_ID_SECRET_FILE` or the
URL's `?id_secret_file=`). A copy of Redis (a dump, a replica, a stolen backup) then shows
*that* some customer bought something, never *who*, unless the secret leaks too.

The server, the publisher, `recsvc forget` and the trainer all derive the same keys from the
same secret, so lookups stay one round trip: nothing is ever un-hashed.

Forget list: entries are self-describing, `hmac-sha256:<key fingerprint>:<user key>`, so a
trainer reading the list (from the store, or a file written by `recsvc store forgotten`) hashes
its own customer ids with the secret and drops the matching ones (`resolve_forgotten`). The
fingerprint catches a trainer holding the wrong secret, which would otherwise silently keep
forgotten customers.

Keys: HMAC-SHA256 truncated to 128 bits, base64url (22 characters). 128 bits keep collisions
out of reach for any realistic customer base (p ~ n^2 / 2^129) at a third of the full
digest's Redis memory. Changing the secret changes every key: republish, and the real-time
state (short-lived) starts afresh.

Must not import `training` or `serving`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recsvc.errors import InvalidInput

SECRET_ENV = "RECSVC_ID_SECRET"
SECRET_FILE_ENV = "RECSVC_ID_SECRET_FILE"
HASH_TAG = "hmac-sha256"
MIN_SECRET_BYTES = 16
KEY_BYTES = 16
PLAIN = "plain"  # what a version's meta says when ids are stored in clear


@dataclass(frozen=True)
class IdHasher:
    """Derives store keys for customer ids from a secret (never printed: repr hides it)."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise InvalidInput(
                SECRET_ENV, f"the id secret must be at least {MIN_SECRET_BYTES} bytes long"
            )

    def user_key(self, user_id: str) -> str:
        """The store key of a customer id: 22 characters of base64url."""
        digest = hmac.new(
            self.secret, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()
        return base64.urlsafe_b64encode(digest[:KEY_BYTES]).decode("ascii").rstrip("=")

    @property
    def fingerprint(self) -> str:
        """8 hex characters identifying the secret (safe to store and log; not reversible)."""
        return hmac.new(self.secret, b"recsvc id-key fingerprint", hashlib.sha256).hexdigest()[:8]

    @property
    def mode(self) -> str:
        """What a version's meta records: `hmac-sha256:<fingerprint>`."""
        return f"{HASH_TAG}:{self.fingerprint}"

    def entry_of_key(self, key: str) -> str:
        """The forget-list entry of a user key."""
        return f"{HASH_TAG}:{self.fingerprint}:{key}"

    def forget_entry(self, user_id: str) -> str:
        """The forget-list entry of a customer id."""
        return self.entry_of_key(self.user_key(user_id))


def load_id_secret(
    secret_file: str | None = None, environ: Mapping[str, str] | None = None
) -> bytes:
    """The id secret: `secret_file`, else `$RECSVC_ID_SECRET_FILE`, else `$RECSVC_ID_SECRET`.

    A file's content is used with surrounding whitespace stripped. Raises InvalidInput when
    none is set, the file cannot be read, or the secret is shorter than 16 bytes.
    """
    env = os.environ if environ is None else environ
    path = secret_file or env.get(SECRET_FILE_ENV)
    if path:
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise InvalidInput("id_secret_file", f"cannot read {path}: {exc.strerror}") from None
        source = "id_secret_file"
    else:
        secret = env.get(SECRET_ENV, "").strip().encode("utf-8")
        source = SECRET_ENV
        if not secret:
            raise InvalidInput(
                SECRET_ENV,
                "hash_ids is on but no secret is set: export RECSVC_ID_SECRET (or "
                "RECSVC_ID_SECRET_FILE, or ?id_secret_file= in the store URL)",
            )
    if len(secret) < MIN_SECRET_BYTES:
        raise InvalidInput(source, f"the id secret must be at least {MIN_SECRET_BYTES} bytes long")
    return secret


def hasher_from_env(
    secret_file: str | None = None, environ: Mapping[str, str] | None = None
) -> IdHasher:
    """An IdHasher over `load_id_secret(...)`."""
    return IdHasher(load_id_secret(secret_file, environ))


# A hashed forget-list entry exactly: tag, 8 hex of fingerprint, 22 base64url of key. Anything
# else is a plain customer id, which may well start with "hmac-sha256:" (shops choose ids).
_HASHED_ENTRY = re.compile(rf"{HASH_TAG}:[0-9a-f]{{8}}:[A-Za-z0-9_-]{{22}}")


def is_hashed_entry(entry: str) -> bool:
    """Whether a forget-list entry is a keyed hash (`IdHasher.entry_of_key`), not a plain id."""
    return _HASHED_ENTRY.fullmatch(entry) is not None


def resolve_forgotten(
    entries: Iterable[str], user_ids: Sequence[str], hasher: IdHasher | None = None
) -> list[str]:
    """The ids among `user_ids` that the forget list `entries` names (plain or hashed).

    Plain entries match ids directly; `hmac-sha256:` entries match ids whose key under the
    secret (`hasher`, default from the environment) is listed. Raises InvalidInput when the
    list holds hashed entries and no secret is set, or they were made with another secret.
    """
    plain: set[str] = set()
    hashed: set[str] = set()
    fingerprints: set[str] = set()
    for entry in entries:
        if is_hashed_entry(entry):
            _, fingerprint, key = entry.split(":")
            fingerprints.add(fingerprint)
            hashed.add(key)
        else:
            plain.add(entry)
    found = [u for u in user_ids if u in plain]
    if not hashed:
        return found
    hasher = hasher if hasher is not None else hasher_from_env()
    wrong = fingerprints - {hasher.fingerprint}
    if wrong:
        raise InvalidInput(
            SECRET_ENV,
            f"the forget list holds ids hashed with another secret (fingerprint "
            f"{', '.join(sorted(wrong))}, ours {hasher.fingerprint}): use the store's secret",
        )
    seen = set(found)
    found += [u for u in user_ids if u not in seen and hasher.user_key(u) in hashed]
    return found
