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


@pytest.mark.root
def test_run_view_port_in_use_stops_before_the_mesh(tmp_path, page_assets):
    from test_run_view import EXPERIMENT

    (tmp_path / "tiny.yaml").write_text(EXPERIMENT)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        r = _meshemu("run", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "out"), "--view", "--view-port",
                     str(held.getsockname()[1]))
    _one_line_error(r, "in use")
    assert not (tmp_path / "out").exists()  # nothing ran


CONFIG = "name: bad\nconstellation: demo\nwindow: {start_s: 0, duration_s: 2, step_s: 1}\n"


@pytest.mark.parametrize("name,text,needle", [
    ("run.json", "[1, 2", "run.json: not JSON"),
    ("run.json", "[1, 2]", "expected a JSON object"),
    ("run.json", '{"rank_nodes": ["zz"]}', "names node 'zz'"),
    ("run.json", b"\xff\xfe", "not UTF-8"),
    ("requests.jsonl", '{"kind": "token", "step": 0}\nnot json\n', "requests.jsonl:2: not a JSON line"),
    ("requests.jsonl", '{"kind": "token", "step": "x"}\n', "is not a step number"),
    ("routes.csv", "a,b\n1,2\n", "no src and dst columns"),
])
def test_a_damaged_results_folder_is_one_line(tmp_path, demo_series, name, text, needle):
    (tmp_path / "config.yaml").write_text(CONFIG)
    demo_series.save(tmp_path / "series.npz")
    (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    _one_line_error(_meshemu("view", str(tmp_path), "--export", str(tmp_path / "v.html")), needle)


@pytest.mark.parametrize("export,needle", [("", "--export is empty"), ("/proc/x.html", "cannot write"),
                                           ("DIR", "is a folder")])
def test_an_export_that_cannot_be_written_is_refused_first(tmp_path, demo_series, export, needle):
    path = demo_series.save(tmp_path / "demo.npz")
    _one_line_error(_meshemu("view", str(path), "--export", str(tmp_path) if export == "DIR" else export), needle)
