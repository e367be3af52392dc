"""The ``fedge`` command line: one module per command, imported only when used.

Commands are registered by module path, so ``fedge predict`` never imports torch
and ``--help`` stays fast. Each command module offers ``add_parser(subparsers)``,
which sets ``run(args) -> int`` as the handler; the typed work it calls lives in
the packages below (``shared``, ``server``, ``edge_export``, ``simulations``),
none of which imports this package.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from fedge.shared.errors import FedgeError, RunFailedError

# command name -> (module, one-line help); the module is imported on use.
# `simulate` stays last: it is the command most often extended.
COMMANDS: dict[str, tuple[str, str]] = {
    "node": ("fedge.cli.node", "a data owner's node: check its data, start it"),
    "status": ("fedge.cli.status", "progress of a run folder, live or finished"),
    "privacy": (
        "fedge.cli.privacy",
        "ε of a DP-SGD plan, or the noise multiplier for a target ε",
    ),
    "report": ("fedge.cli.report", "write plots and report.md for a run folder"),
    "export": ("fedge.cli.export", "export a run's model to verified ONNX (+ int8)"),
    "verify": (
        "fedge.cli.verify",
        "re-check every hash, the metadata and the signature",
    ),
    "keygen": ("fedge.cli.keygen", "make a key pair to sign exports with"),
    "predict": ("fedge.cli.predict", "predict with an exported ONNX model (no torch)"),
    "bench-edge": (
        "fedge.cli.bench_edge",
        "latency, throughput and size on this device",
    ),
    "simulate": (
        "fedge.cli.simulate",
        "run a federation of virtual clients on this machine",
    ),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """Return the top-level parser; only ``command``'s module is imported."""
    parser = argparse.ArgumentParser(
        prog="fedge",
        description="Federated and edge learning: private federated training, verified edge models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and end in one line: user errors exit 2, failed runs 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # A command with actions (`fedge node start`) names itself in full.
    name = getattr(args, "command_name", args.command)
    try:
        code = int(args.run(args))
        sys.stdout.flush()  # a reader that left shows up here, not at exit
        return code
    except BrokenPipeError:
        return _reader_left()
    except RunFailedError as e:
        print(f"fedge {name}: run failed: {e}", file=sys.stderr)
        return 1
    except FedgeError as e:
        print(f"fedge {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedge {name}: interrupted", file=sys.stderr)
        return 130


def _reader_left() -> int:
    """End quietly when stdout's reader closed the pipe (``fedge predict ... | head``).

    Unix tools die of SIGPIPE without a word; Python raises instead, and would
    raise again flushing stdout at exit, so stdout goes to /dev/null (the
    recipe of Python's ``signal`` documentation). The exit status is the one a
    shell reports for a tool killed by SIGPIPE.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def run() -> NoReturn:
    """Run :func:`main` as the ``fedge`` command and exit with its status.

    Everything the command started has ended by then, so the interpreter's
    last full garbage collection (0.3 s over torch's objects after a
    simulation) is spared: ``gc.freeze`` leaves those objects to the exit.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
