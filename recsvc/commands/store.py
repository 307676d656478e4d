"""Feature-store commands: publish, rollback, store status / forgotten, forget, items update.

    recsvc publish --bundle B --store URL [--keep 3] [--cluster]
    recsvc rollback --store URL [--to VERSION]
    recsvc store status --store URL [--json]
    recsvc store forgotten --store URL [--out forget.txt]
    recsvc forget --user U --store URL [--forget-file PATH]
    recsvc items update --store URL --items items.csv

`--store` defaults to `$RECSVC_STORE`. The forget list lives in the store (`recsvc store
forgotten` prints it, one id a line, for the trainer); `--forget-file` also appends the id to a
local file. With `?hash_ids=1` on the URL the store keeps customer ids only as keyed hashes
(`recsvc.privacy`): `forget` hashes the id with `$RECSVC_ID_SECRET`, and `store forgotten`
prints `hmac-sha256:<fingerprint>:<key>` entries that the trainer matches with the same secret. A `memory://` store lives only as long as the process, so these commands on it only
make sense inside `recsvc serve` (they warn). Store URLs are printed with passwords masked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

STORE_ENV = "RECSVC_STORE"


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        required=STORE_ENV not in os.environ,
        help=f"store URL: memory://name, redis://host:port/db, rediss://..., "
        f"redis+cluster://host:port (default ${STORE_ENV})",
    )
    parser.add_argument("--cluster", action="store_true", help="the Redis URL is a Cluster node")


def register(subparsers: Any) -> None:
    publish = subparsers.add_parser("publish", help="publish a model bundle into the feature store")
    publish.add_argument("--bundle", required=True, help="bundle directory (or a bundles/ root)")
    _store_flags(publish)
    publish.add_argument("--keep", type=int, default=3, help="complete versions to keep (default 3)")
    publish.set_defaults(func=_noting_memory(run_publish))

    rollback = subparsers.add_parser("rollback", help="point the store back at an older version")
    _store_flags(rollback)
    rollback.add_argument("--to", default=None, help="version id (default: the one before current)")
    rollback.set_defaults(func=_noting_memory(run_rollback))

    store = subparsers.add_parser("store", help="inspect the feature store")
    store_commands = store.add_subparsers(dest="store_command", metavar="SUBCOMMAND")
    status = store_commands.add_parser("status", help="stored versions and which one is current")
    _store_flags(status)
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    status.set_defaults(func=_noting_memory(run_status))
    forgotten = store_commands.add_parser("forgotten", help="ids on the forget list, one a line")
    _store_flags(forgotten)
    forgotten.add_argument("--out", default=None, help="write to this file instead of stdout")
    forgotten.set_defaults(func=_noting_memory(run_forgotten))
    store.set_defaults(func=lambda args: _usage(store))

    forget = subparsers.add_parser(
        "forget", help="delete a customer's data from every stored version (privacy request)"
    )
    forget.add_argument("--user", required=True, help="the customer's user id")
    _store_flags(forget)
    forget.add_argument(
        "--forget-file", default=None, help="also append the id to this file (one id a line)"
    )
    forget.set_defaults(func=_noting_memory(run_forget))

    items = subparsers.add_parser("items", help="item metadata in the feature store")
    items_commands = items.add_subparsers(dest="items_command", metavar="SUBCOMMAND")
    update = items_commands.add_parser(
        "update", help="update category, price, stock or title without retraining"
    )
    _store_flags(update)
    update.add_argument("--items", required=True, help="CSV, JSON Lines or Parquet with item_id")
    update.add_argument("--format", choices=["csv", "jsonl", "parquet"], help="override the extension")
    update.set_defaults(func=_noting_memory(run_items_update))
    items.set_defaults(func=lambda args: _usage(items))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _open(args: argparse.Namespace) -> Any:
    from recsvc.store import open_store

    options: dict[str, Any] = {"cluster": True} if args.cluster else {}
    return open_store(args.store, **options)


def _noting_memory(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`run`, followed on success by a note that an embedded store (memory://) it worked on
    lives only in this process. After, not before: a command that fails says one line."""

    def noted(args: argparse.Namespace) -> int:
        code = run(args)
        if code == 0 and str(args.store or "").lower().startswith("memory://"):
            print(f"recsvc {args.command}: note: {args.store} lives only in this process; "
                  "its contents are gone when the command exits", file=sys.stderr)
        return code

    return noted


def run_publish(args: argparse.Namespace) -> int:
    from recsvc.bundle import Bundle
    from recsvc.errors import InvalidInput

    if args.keep < 1:
        raise InvalidInput("--keep", "must be at least 1")
    bundle = Bundle(args.bundle)
    store = _open(args)
    try:
        report = store.publish(bundle, keep=args.keep)
    finally:
        store.close()
    print(
        f"published {report.version} to {store.url}: {report.n_users} users, {report.n_items} "
        f"items, {report.keys} keys, {report.bytes / 2**20:.1f} MiB in {report.seconds:.1f}s; "
        f"current is now {report.version}"
    )
    if report.cleaned_partial:
        print(f"removed interrupted publishes: {', '.join(report.cleaned_partial)}")
    if report.removed_versions:
        print(f"removed old versions: {', '.join(report.removed_versions)}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        version = store.rollback(args.to)
    finally:
        store.close()
    print(f"current is now {version}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        state = store.state()
        versions = store.versions()
    finally:
        store.close()
    if args.json:
        print(
            json.dumps(
                {
                    "store": store.url,
                    "current": state.current,
                    "items_revision": state.items_revision,
                    "versions": [v.to_dict() for v in versions],
                },
                indent=2,
            )
        )
        return 0
    print(f"store    {store.url}")
    print(f"current  {state.current or '(none: nothing published yet)'}")
    if versions:
        print(f"{'':2}{'version':<34}{'status':<9}{'users':>10}{'items':>9}{'MiB':>9}  published")
        for v in versions:
            mark = "*" if v.is_current else " "
            print(
                f"{mark} {v.id:<34}{v.status:<9}{v.n_users:>10}{v.n_items:>9}"
                f"{v.bytes / 2**20:>9.1f}  {v.published_at}"
            )
    return 0


def run_forgotten(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        users = store.forgotten_users()
    finally:
        store.close()
    text = "".join(f"{u}\n" for u in users)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"{len(users)} forgotten users written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def run_forget(args: argparse.Namespace) -> int:
    from recsvc.errors import InvalidInput
    from recsvc.events import MAX_ID_LENGTH
    from recsvc.ids import line_to_append

    user = args.user.strip()
    if not user or not user.isprintable() or len(user) > MAX_ID_LENGTH:
        raise InvalidInput(
            "--user", f"must be one printable user id of at most {MAX_ID_LENGTH} characters"
        )
    # the file opens first: a path it cannot write to fails before anything is forgotten;
    # a regular file is also read, for whether its last line ends (a pipe cannot be)
    path = args.forget_file
    mode = "ab+" if path and (os.path.isfile(path) or not os.path.exists(path)) else "ab"
    with open(path, mode) if path else contextlib.nullcontext() as handle:
        store = _open(args)
        try:
            held = store.forget_user(user)
        finally:
            store.close()
        if handle is not None:
            handle.write(line_to_append(handle, user))
    where = f" and {args.forget_file}" if args.forget_file else ""
    print(
        f"forgot the user: data removed from {held} stored version(s) and real-time state; "
        f"id added to the store's forget list{where}"
    )
    return 0


def run_items_update(args: argparse.Namespace) -> int:
    from recsvc.events import read_catalog_frame

    frame = read_catalog_frame(args.items, args.format)
    store = _open(args)
    try:
        report = store.update_items(frame)
    finally:
        store.close()
    print(
        f"items update: {report.rows} rows, {report.updated} items updated, "
        f"{report.unknown} not in any stored version (kept for later versions); "
        f"items revision {report.revision}"
    )
    for reason, count in sorted(report.bad.items()):
        print(f"  {count:>7}  ignored: {reason}")
    return 0
