"""The committed gRPC modules are exactly what grpcio-tools makes from proto/ today."""

import subprocess
import sys

from meshemu.serving.rpc import regenerate


def test_generated_code_matches_the_proto(tmp_path):
    fresh = regenerate.generate(tmp_path)
    assert sorted(f.name for f in fresh) == sorted(regenerate.generated_names())
    for f in fresh:
        committed = regenerate.HERE / f.name
        assert committed.read_bytes() == f.read_bytes(), (
            f"{committed} drifted from proto/: run python -m meshemu.serving.rpc.regenerate")


def test_generated_service_imports_from_the_package():
    text = (regenerate.HERE / "shard_pb2_grpc.py").read_text()
    assert "from meshemu.serving.rpc import shard_pb2 as shard__pb2" in text
    assert "\nimport shard_pb2" not in text


def test_check_command_reports_in_step():
    out = subprocess.run([sys.executable, "-m", "meshemu.serving.rpc.regenerate", "--check"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "in step" in out.stdout
