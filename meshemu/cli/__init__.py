"""The ``meshemu`` command: this file only assembles the subcommands.

Each module named in ``_MODULES`` defines ``register(commands, benches)``,
adding its subcommands to ``meshemu ...`` and its benchmarks to
``meshemu bench ...``. A command is a function ``run(args) -> int``.
A :class:`~meshemu.errors.MeshemuError` becomes one line on stderr.

Command modules import their layers inside the command functions, and only
there in the project: every module is imported to build the parser, and
``meshemu --help`` must not wait for gRPC, matplotlib or the emulation.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from meshemu.errors import InputError, MeshemuError

_MODULES = ("topology", "emulate", "model", "serve", "run", "view")


class _Parser(argparse.ArgumentParser):
    """A usage error is one line too, like every other error (the full usage is a --help away)."""

    def error(self, message):
        command = self.prog.removeprefix("meshemu").strip()
        raise InputError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="meshemu",
        description="Emulate LEO satellite compute meshes, from orbits to sharded model serving.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = commands.add_parser("bench", help="benchmarks that print figures and ratios")
    benches = bench.add_subparsers(dest="bench", metavar="TARGET", required=True)
    for name in _MODULES:
        importlib.import_module(f"meshemu.cli.{name}").register(commands, benches)
    return parser


def main(argv=None) -> int:
    # A shell starts a background job with SIGINT ignored, and the child inherits that: then 'kill -INT' (or a
    # Ctrl-C relayed by a wrapper) would not stop a run and clean up. meshemu always takes SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.run(args) or 0
    except MeshemuError as err:
        print(f"meshemu: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("meshemu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
