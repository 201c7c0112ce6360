"""Regenerate the gRPC Python modules of this folder from ``proto/*.proto``.

    python -m meshemu.serving.rpc.regenerate           # rewrite the committed modules
    python -m meshemu.serving.rpc.regenerate --check   # exit 1 if they drifted

grpcio-tools writes ``import shard_pb2`` into the service module, which only
works with the output folder on ``sys.path``; :func:`generate` rewrites that
one line to import from this package.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from meshemu.errors import CapabilityError

PACKAGE = "meshemu.serving.rpc"
HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE.parents[2] / "proto"


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    files = sorted(proto_dir.glob("*.proto"))
    if not files:
        raise CapabilityError(f"no .proto files in {proto_dir} (is this a source checkout?)")
    return files


def generated_names(proto_dir: Path = PROTO_DIR) -> list[str]:
    """File names grpcio-tools makes from the protos: ``X_pb2.py`` and ``X_pb2_grpc.py`` each."""
    return [f"{p.stem}{suffix}" for p in proto_files(proto_dir) for suffix in ("_pb2.py", "_pb2_grpc.py")]


def generate(out_dir, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Run protoc (from grpcio-tools) on every proto into ``out_dir``; return the files written."""
    try:
        from importlib.resources import files

        from grpc_tools import protoc
    except ImportError as err:  # pragma: no cover - the serving extra brings it
        raise CapabilityError("grpcio-tools is not installed: pip install -e '.[serving]'") from err
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(files("grpc_tools") / "_proto")
    protos = proto_files(proto_dir)
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}"] + [p.name for p in protos]
    if protoc.main(args) != 0:
        raise CapabilityError(f"protoc failed on {', '.join(p.name for p in protos)}")
    written = []
    for p in protos:
        grpc_module = out_dir / f"{p.stem}_pb2_grpc.py"
        text = re.sub(rf"^import {p.stem}_pb2 as ", f"from {PACKAGE} import {p.stem}_pb2 as ",
                      grpc_module.read_text(), flags=re.MULTILINE)
        grpc_module.write_text(text)
        written += [out_dir / f"{p.stem}_pb2.py", grpc_module]
    return written


def drifted(package_dir: Path = HERE, proto_dir: Path = PROTO_DIR) -> list[str]:
    """Names of committed modules that differ from a fresh generation (empty: in step)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(tmp, proto_dir)
        return [f.name for f in fresh
                if not (package_dir / f.name).exists() or (package_dir / f.name).read_bytes() != f.read_bytes()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshemu.serving.rpc.regenerate", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        print("in step with the protos" if not stale else f"drifted: {', '.join(stale)}")
        return 1 if stale else 0
    for f in generate(HERE):
        print(f"wrote {f.relative_to(HERE.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
