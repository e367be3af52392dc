"""``fedge keygen KEY``: a key pair for signing exports (KEY and KEY.pub)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedge keygen``."""
    p = subparsers.add_parser(
        "keygen",
        help="make a key pair to sign exports with (KEY, KEY.pub)",
        description=(
            "Write a new elliptic-curve (P-256) private key to KEY (PEM, mode 0600) "
            "and its public key to KEY.pub. The coordinator (run config sign-key) "
            "or `fedge export --sign-key KEY` signs with KEY; devices check with "
            "KEY.pub (`fedge verify --public-key`, `fedge predict --public-key`). "
            "An existing file is never overwritten."
        ),
    )
    p.add_argument("key", type=Path, metavar="KEY", help="private key file to create")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the key pair; an existing file raises ConfigError (exit 2)."""
    from fedge.edge_export.signing import generate_key_pair

    public = generate_key_pair(args.key)
    print(f"private key {args.key} (keep it on the coordinator), public key {public}")
    return 0
