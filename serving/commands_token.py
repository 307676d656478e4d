"""`recsvc token create | list | revoke`: the server's client tokens (stored as hashes).

    recsvc token create --name storefront [--admin] [--rate 500] --tokens-file tokens.txt
    recsvc token list --tokens-file tokens.txt
    recsvc token revoke --name storefront --tokens-file tokens.txt

`create` prints the new token once on stdout (nothing else goes to stdout, so
`TOKEN=$(recsvc token create ...)` works) and appends `name role sha256:<hash>` to the file,
created with mode 0600. The token itself is kept nowhere: lose it and create another. A running
server picks up changes to the file within a second. `--tokens-file` defaults to
`$RECSVC_TOKENS_FILE`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from serving.config import TOKENS_FILE_ENV as FILE_ENV


def _file_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokens-file",
        default=os.environ.get(FILE_ENV),
        required=FILE_ENV not in os.environ,
        help=f"the server's tokens file (default ${FILE_ENV})",
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("token", help="client tokens for `recsvc serve` (hashed at rest)")
    commands = parser.add_subparsers(dest="token_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _usage(parser))

    create = commands.add_parser("create", help="make a token, print it once, store its hash")
    create.add_argument("--name", required=True, help="who holds it, e.g. storefront (logs, limits)")
    create.add_argument("--admin", action="store_true", help="may also call admin RPCs (ForgetUser)")
    create.add_argument("--rate", type=float, default=None, help="this client's requests/s limit")
    _file_flag(create)
    create.set_defaults(func=run_create)

    listing = commands.add_parser("list", help="names, roles and rate limits (never tokens)")
    _file_flag(listing)
    listing.set_defaults(func=run_list)

    revoke = commands.add_parser("revoke", help="remove a client's token")
    revoke.add_argument("--name", required=True)
    _file_flag(revoke)
    revoke.set_defaults(func=run_revoke)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_create(args: argparse.Namespace) -> int:
    from serving.auth import add_token

    token = add_token(args.tokens_file, args.name, "admin" if args.admin else "client", args.rate)
    print(token)
    print(
        f"recsvc token: created a {'admin' if args.admin else 'client'} token for '{args.name}' "
        f"(hash appended to {args.tokens_file}); it is shown only this once",
        file=sys.stderr,
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    from pathlib import Path

    from recsvc.errors import InvalidInput
    from serving.auth import parse_tokens, read_tokens_file

    path = Path(args.tokens_file)
    if not path.exists():
        raise InvalidInput("--tokens-file", f"{path} does not exist")
    for client in parse_tokens(read_tokens_file(path), str(path)):
        rate = f"{client.rate:g}/s" if client.rate is not None else "default"
        print(f"{client.name:<24} {client.role:<7} rate {rate}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from recsvc.errors import NotFound
    from serving.auth import remove_token

    if not remove_token(args.tokens_file, args.name):
        raise NotFound(f"--name: '{args.name}' has no token in {args.tokens_file}")
    print(f"revoked the token of '{args.name}'")
    return 0
