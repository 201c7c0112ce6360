"""``meshemu view`` from the command line: bad input is one line, never a traceback."""

import socket
import subprocess
import sys

import pytest


def _meshemu(*args, timeout_s=120):
    return subprocess.run([sys.executable, "-m", "meshemu", *args], capture_output=True, text=True, timeout=timeout_s)


def _one_line_error(r, needle):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("meshemu: error:") and needle in lines[0], r.stderr


class TestViewCli:
    def test_missing_folder(self, tmp_path):
        _one_line_error(_meshemu("view", str(tmp_path / "nope"), "--export", str(tmp_path / "v.html")), "no such")

    def test_port_in_use(self, demo_series, tmp_path, page_assets):
        path = demo_series.save(tmp_path / "demo.npz")
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen(1)
            port = held.getsockname()[1]
            _one_line_error(_meshemu("view", str(path), "--port", str(port)), "in use")

    def test_attach_without_an_emulation(self, tmp_path):
        _one_line_error(_meshemu("view", str(tmp_path), "--attach"), "nothing to attach to")

    def test_export_writes_one_page(self, demo_series, tmp_path, page_assets):
        path = demo_series.save(tmp_path / "demo.npz")
        r = _meshemu("view", str(path), "--export", str(tmp_path / "v.html"), "--pair", "Tokyo", "Delhi")
        assert r.returncode == 0, r.stderr
        html = (tmp_path / "v.html").read_text()
        assert html.startswith("<!DOCTYPE html>") and "Tokyo - Delhi" in html
