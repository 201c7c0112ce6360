"""Bad input, tried as a careless or hostile user would: one line naming where and what, no silent
wrong result, nothing allocated beyond what the machine has (issue 10)."""

from pathlib import Path

import pytest

from meshemu.cli import main
from meshemu.config import parse_yaml
from meshemu.constellation import parse_tles
from meshemu.constellation.ground import parse_ground_stations
from meshemu.constellation.tle import format_tle, tle_checksum
from meshemu.errors import InputError

QUICKSTART = (Path(__file__).parents[1] / "experiments" / "quickstart.yaml").read_text()
SHELL = "  - {name: a, planes: 4, sats_per_plane: 4, altitude_km: 800, inclination_deg: 53}\n"


def one_line(capsys, *argv) -> str:
    """Run the CLI; it must fail with exactly one 'meshemu: error:' line and no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("meshemu: error: "), err
    return err[0]


def tle_text(n_planes=2, per_plane=2, titles=True) -> str:
    lines = []
    for i in range(n_planes):
        for j in range(per_plane):
            l1, l2 = format_tle(i * per_plane + j + 1, 2026, 1.0, 53.0, i * 90.0, 1e-7, 0.0, j * 90.0, 15.19)
            lines += ([f"S{i}{j}"] if titles else []) + [l1, l2]
    return "\n".join(lines) + "\n"


def with_column(line: str, column: int, char: str) -> str:
    """``line`` with 1-based ``column`` replaced, checksum unchanged (so only the field check can catch it)."""
    out = line[:column - 1] + char + line[column:]
    assert tle_checksum(out) == tle_checksum(line) or not char.isdigit()
    return out


class TestSilentWrongResults:
    L1, L2 = format_tle(1, 2026, 1.0, 53.0, 0.0, 1e-7, 0.0, 0.0, 15.19)

    @pytest.mark.parametrize("line,column,char,words", [
        (1, 23, "é", ["column 23", "epoch day", "not a printable ASCII"]),
        (1, 23, "x", ["column 23", "epoch day, columns 21-32", "expected a digit"]),
        (1, 20, "O", ["column 20", "epoch year"]),
        (2, 12, "o", ["column 12", "inclination"]),
        (2, 30, "-", ["column 30", "eccentricity"]),
        (2, 55, " ", ["column 55", "mean motion"]),
        (1, 33, "0", ["column 33", "separator"]),
    ])
    def test_a_stray_character_in_a_numeric_field_names_line_column_and_field(self, line, column, char, words):
        # sgp4 reads these as a number ending early (the epoch day moved by a day) and says nothing
        lines = [self.L1, self.L2]
        lines[line - 1] = with_column(lines[line - 1], column, char)
        fixed = [l[:68] + str(tle_checksum(l)) for l in lines]
        with pytest.raises(InputError) as err:
            parse_tles("T\n" + "\n".join(fixed) + "\n", "s.tle")
        assert str(err.value).startswith(f"s.tle:{line + 1}: TLE line {line}: ")
        for w in words:
            assert w in str(err.value)

    def test_angles_outside_their_range(self):
        l2 = self.L2[:8] + "190.0000" + self.L2[16:]
        l2 = l2[:68] + str(tle_checksum(l2))
        with pytest.raises(InputError, match=r"columns 9-16 \(inclination \(deg\)\) read 190, outside \[0, 180\]"):
            parse_tles(f"{self.L1}\n{l2}\n", "s.tle")

    def test_the_same_satellite_twice(self):
        # before: 5 satellites and a grid that could not be inferred, so no ISLs and no word why
        text = tle_text()  # 4 satellites, 12 lines; the first one again on lines 13-15
        with pytest.raises(InputError, match=r"s.tle:14: TLE line 1: satellite 00001 appears twice "
                                             r"\(first on line 2\)"):
            parse_tles(text + "\n".join(text.splitlines()[:3]) + "\n", "s.tle")

    def test_two_shells_of_one_name(self, capsys, tmp_path):
        (tmp_path / "c.yaml").write_text("name: dup\nshells:\n" + SHELL + SHELL.replace("planes: 4", "planes: 5"))
        err = one_line(capsys, "rtt", "-c", tmp_path / "c.yaml", "--from", "0", "--to", "1", "--duration", "1")
        assert "c.yaml: shells: two are named 'a': give each shell its own name" in err

    @pytest.mark.parametrize("name,words", [("../../x", ["'../../x'", "names a folder"]), ("''", ["name is empty"]),
                                            (".hidden", ["must not start with '.'"])])
    def test_names_that_would_escape_or_vanish(self, capsys, tmp_path, name, words):
        (tmp_path / "c.yaml").write_text(f"name: {name}\nshells:\n" + SHELL)
        err = one_line(capsys, "topology", "-c", tmp_path / "c.yaml", "--duration", "1", "--out", tmp_path / "o.npz")
        assert all(w in err for w in words) and not (tmp_path / "o.npz").exists()
        (tmp_path / "e.yaml").write_text(QUICKSTART.replace("name: quickstart", f"name: {name}"))
        err = one_line(capsys, "run", tmp_path / "e.yaml", "--check")
        assert "e.yaml" in err and all(w in err for w in words)

    def test_duplicate_yaml_keys_name_file_and_line(self, capsys, tmp_path):
        (tmp_path / "e.yaml").write_text(QUICKSTART + "seed: 1\n")
        err = one_line(capsys, "run", tmp_path / "e.yaml", "--check")
        line = QUICKSTART.count("\n") + 1
        assert f"e.yaml:{line}: key 'seed' appears twice (first on line {line - 1})" in err

    def test_duplicate_keys_nested_and_on_one_line(self):
        with pytest.raises(InputError, match=r"f:2: key 'b' appears twice"):
            parse_yaml("a:\n  {b: 1, b: 2}\n", "f")
        assert parse_yaml("base: &b {x: 1}\nc: {<<: *b, x: 2}\n") == {"base": {"x": 1}, "c": {"x": 2}}

    def test_a_name_two_nodes_share_is_refused_not_guessed(self):
        from meshemu.links.series import find_node

        with pytest.raises(InputError, match=r"'a' names 2 nodes \(ids 0, 2\): give the node id"):
            find_node(("a", "b", "a"), "a")

    def test_a_ground_station_named_by_digits_only(self):
        with pytest.raises(InputError, match="g.csv:2: name: ground-station name '42' is empty or digits only"):
            parse_ground_stations("0,Paris,48.8,2.3,0\n1,42,1,2,0\n", "g.csv")


class TestNoTracebacks:
    @pytest.mark.parametrize("option", ["--tles", "--isls", "-c", "--ground-stations"])
    def test_binary_input_files(self, capsys, tmp_path, option):
        path = tmp_path / ("b.yaml" if option == "-c" else "b.txt")
        path.write_bytes(b"name: x\n\xff\xfe\x00\x01\x80")
        argv = ["rtt", option, path, "--from", "0", "--to", "1", "--duration", "1"]
        if option == "--isls":
            (tmp_path / "t.tle").write_text(tle_text())
            argv += ["--tles", tmp_path / "t.tle"]
        err = one_line(capsys, *argv)
        assert f"{path}:2: byte 0xff at offset 8 is not UTF-8" in err

    @pytest.mark.parametrize("argv,words", [
        (["--duration", "inf"], ["--duration", "'inf' is not a finite number"]),
        (["--duration", "nan"], ["--duration", "not a finite number"]),
        (["--start", "nan"], ["--start", "not a finite number"]),
        (["--step", "inf"], ["--step", "'inf' is not a finite number"]),
        (["--step", "-1"], ["--step", "must be greater than 0"]),
        (["--gsl-max-range-m", "-5"], ["--gsl-max-range-m", "-5 must be greater than 0"]),
        (["--gsl-min-elevation-deg", "200"], ["--gsl-min-elevation-deg", "200 deg is outside [-90, 90] deg"]),
        (["--duration", "1e12"], ["the window reaches 1e+12 s", "200 years"]),
        (["--start", "1e300"], ["1e+300 s"]),
        (["--step", "1e-9", "--duration", "100"], ["time grid of 1e+11 steps", "of memory", "longer step"]),
        (["--grid", "0x0"], ["--grid '0x0'"]),
    ])
    def test_window_and_link_options(self, capsys, argv, words):
        if "--grid" in argv:
            argv = argv + ["--tles", "/dev/null"]
        err = one_line(capsys, "rtt", "--from", "Paris", "--to", "Moscow", "--duration", "2", *argv)
        assert all(w in err for w in words), err

    def test_an_epoch_centuries_from_the_elements_is_refused(self, capsys):
        # before: SGP4 propagated the 2026 elements back to year 1 and printed RTTs
        err = one_line(capsys, "rtt", "--from", "Paris", "--to", "Moscow", "--duration", "2", "--epoch", "0001-01-01")
        assert "epoch: the window lies 2,025 years from the element sets' epoch" in err

    def test_a_kv_cache_too_big_is_refused_before_it_is_allocated(self):
        from meshemu.serving.compute import make_compute

        compute = make_compute("tiny:llama:0:max_context=2000000000")
        with pytest.raises(InputError, match=r"KV cache of 1 x 1,000,000,000 tokens needs about [\d.]+ GiB"):
            compute.new_cache(1, 10**9)
        assert compute.new_cache(1, 64) is not None

    def test_a_shell_too_big_for_memory_is_refused_before_anything_is_made(self, capsys, tmp_path):
        (tmp_path / "h.yaml").write_text("name: huge\nshells:\n  - {name: a, planes: 100000, sats_per_plane: 100000, "
                                         "altitude_km: 800, inclination_deg: 53}\n")
        err = one_line(capsys, "rtt", "-c", tmp_path / "h.yaml", "--from", "0", "--to", "1", "--duration", "1")
        assert "h.yaml: shells[0]: shell 'a' of 100000 x 100000 = 10,000,000,000 satellites needs about" in err
        assert "give fewer planes or satellites per plane" in err

    def test_a_link_series_too_big_is_refused_with_its_size(self, monkeypatch):
        from meshemu import resources
        from meshemu.links.series import check_series_size

        monkeypatch.setattr(resources, "available_memory_bytes", lambda: 1 << 30)
        check_series_size(64, 100, 100, 128)
        with pytest.raises(InputError, match=r"link series of 1,584 satellites and 100 ground stations over 86,400 "
                                             r"steps needs about [\d.]+ GiB of memory, 1.0 GiB is available"):
            check_series_size(1584, 100, 86400, 3168)

    @pytest.mark.parametrize("out", ["/proc/x.npz", "/nonexistent/x.npz"])
    def test_an_unwritable_output_is_refused_before_the_work(self, capsys, out):
        err = one_line(capsys, "topology", "--duration", "1", "--out", out)
        assert f"{out}: cannot write" in err

    @pytest.mark.parametrize("argv,words", [
        (["--seed", "-1"], ["--seed", "-1 must be 0 or more"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["--top-p", "5"], ["top-p must be in (0, 1]"]),
        (["--temperature", "nan"], ["--temperature"]),
        (["--loopback", "--placement", "teleport"], ["unknown placement 'teleport'"]),
        (["--loopback", "--step-timeout", "-1"], ["--step-timeout"]),
        (["--loopback", "--requests", "100000"], ["--requests", "outside [1, 1024]"]),
        (["--constellation", "demo", "--time-scale", "0"], ["--time-scale"]),
        (["--model", "tiny:llama:0:hidden_size=10000000:n_layers=1000", "--loopback"],
         ["G parameters", "of memory", "give a smaller model"]),
        (["--model", "tiny:llama:x", "--loopback"], ["tiny-model seed 'x'"]),
    ])
    def test_generate_options(self, capsys, argv, words):
        err = one_line(capsys, "generate", "hi", *argv)
        assert all(w in err for w in words), err

    def test_shard_budgets_are_refused(self):
        from meshemu.serving.shard import serve

        with pytest.raises(InputError, match="--step-timeout must be a positive number of seconds, at most 86400"):
            serve("127.0.0.1:0", step_timeout_s=1e300)  # before: an OverflowError in the first wait
        with pytest.raises(InputError, match="--max-tensor-mb must be positive and below 2"):
            serve("127.0.0.1:0", max_tensor_bytes=2**100)

        with pytest.raises(InputError, match="--max-tensor-mb must be positive"):
            serve("127.0.0.1:0", max_tensor_bytes=-1)
        with pytest.raises(InputError, match="--step-timeout must be a positive number of seconds"):
            serve("127.0.0.1:0", step_timeout_s=float("inf"))


class TestCheckedEarly:
    def test_generate_refuses_more_stages_than_layers_before_starting_a_shard(self, capsys, monkeypatch):
        from meshemu.serving import launch

        def no_processes(*args, **kwargs):
            raise AssertionError("a shard process was started")

        monkeypatch.setattr(launch, "start_loopback", no_processes)
        err = one_line(capsys, "generate", "hi", "--model", "tiny:llama:0", "--loopback", "--pp", "50")
        assert "50 pipeline stages for a model of 3 layers: give pp at most 3" in err


class TestRunCheck:
    """``meshemu run FILE --check`` refuses whatever a root run would refuse, naming the file and key."""

    @pytest.mark.parametrize("old,new,words", [
        ("constellation: demo", "constellation: nope", ["constellation: unknown constellation 'nope'"]),
        ("constellation: demo", "constellation: nope.yaml", ["nope.yaml: no such file"]),
        ("ground_station: Paris", "ground_station: Atlantis", ["ground_station: unknown node 'Atlantis'"]),
        ("placement: nearest", "placement: random", ["placement: unknown placement 'random'"]),
        ("placement: nearest", "placement: list:p99s99,p00s01", ["placement: unknown satellite 'p99s99'"]),
        ("placement: nearest", "placement: list:p00s01,p00s01", ["names p00s01 twice"]),
        ("pp: 2,", "pp: 500,", ["parallelism", "500 pipeline stages for a model of 30 layers"]),
        ("tp: 1,", "tp: 10,", ["parallelism", "tensor-parallel degree 10", "9 query heads"]),
        ("source: default", "source: /nonexistent/m.gguf", ["model.source", "no such file"]),
        ("compute: real", "compute: device:tpu9000", ["model.compute", "unknown compute"]),
        ("duration_s: 180", "duration_s: -5", ["window", "greater than 0"]),
        ("duration_s: 180", "duration_s: .inf", ["window.duration_s: expected a finite number"]),
        ("step_s: 1}", "step_s: 0}", ["window", "greater than 0"]),
        ("step_s: 1}", "step_s: 1.0e-9}", ["window", "steps", "of memory"]),
        ("time_scale: 2.0", "time_scale: 0", ["time_scale must be greater than 0"]),
        ("backend: auto}", "backend: auto, loss: 5}", ["shaping.loss is a probability"]),
        ("backend: auto}", "backend: delayline, loss: 0.1}", ["does delay only"]),
        ("requests: 3", "requests: 1e12", ["workload.requests is at most 10,000 per run, got 1,000,000,000,000"]),
        ("concurrency: 1", "concurrency: 5000", ["workload.concurrency is at most 1,024"]),
        ("max_new_tokens: 16", "max_new_tokens: 100000000", ["workload.max_new_tokens", "context of 8192"]),
        ("gap_s: 20", "gap_s: -1", ["gap_s must be 0 s or more"]),
        ("  prompts:\n    - What is the capital of France?", "  chat_template: false\n  prompts:\n    - ''",
         ["workload.prompts[0]: the prompt is 0 tokens"]),
        ("seed: 0", "seed: -1", ["seed must be 0 or more"]),
        ("[Paris, Moscow]", "[Paris, Gotham]", ["probes[0]: unknown node 'Gotham'"]),
        ("seed: 0", "seed: 0\nsweep: {field: parallelism.tp, values: [1, two]}",
         ["sweep.values[1]: 'two' cannot be parallelism.tp: expected an integer"]),
        ("seed: 0", "seed: 0\nsweep: {field: placement, values: [plane, teleport]}",
         ["sweep.values[1]: 'teleport' cannot be placement"]),
    ])
    def test_refused_naming_file_and_key(self, capsys, tmp_path, old, new, words):
        assert old in QUICKSTART
        (tmp_path / "e.yaml").write_text(QUICKSTART.replace(old, new, 1))
        err = one_line(capsys, "run", tmp_path / "e.yaml", "--check")
        assert f"{tmp_path / 'e.yaml'}" in err and all(w in err for w in words), err

    def test_yaml_exponent_without_a_dot_is_a_number(self, capsys, tmp_path):
        # YAML 1.1 (PyYAML) reads 1e3 as text; users mean a number
        (tmp_path / "e.yaml").write_text(QUICKSTART.replace("duration_s: 180", "duration_s: 1e3"))
        assert main(["run", str(tmp_path / "e.yaml"), "--check"]) == 0
        assert "1000 steps" in capsys.readouterr().out

    @pytest.mark.slow
    def test_the_shipped_experiments_pass(self, capsys):
        for path in sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")):
            assert main(["run", str(path), "--check"]) == 0, capsys.readouterr().err


class TestMisleadingMessages:
    def test_a_bad_hypatia_header_is_blamed_on_line_1(self):
        with pytest.raises(InputError, match=r"h.txt:1: '4 x' is neither a TLE title .* Hypatia's header"):
            parse_tles("4 x\n" + tle_text(), "h.txt")

    def test_a_ground_station_header_meshemu_does_not_know(self):
        with pytest.raises(InputError, match=r"g.csv:1: line 1 reads like a header \('name,lat,lon'\).*"
                                             r"name,latitude_deg,longitude_deg"):
            parse_ground_stations("name,lat,lon\nParis,48.8,2.3\n", "g.csv")

    def test_sgp4_rejection_names_the_element(self):
        l1, l2 = format_tle(1, 2026, 1.0, 53.0, 0.0, 0.0, 0.0, 0.0, 30.0)
        with pytest.raises(InputError, match=r"s.tle:1: SAT-00001: SGP4 rejects this element set: .*decayed.*"
                                             r"mean motion 30 rev/day"):
            parse_tles(f"{l1}\n{l2}\n", "s.tle").tles[0].satrec()

    def test_a_missing_yaml_path_is_no_such_file(self, capsys):
        err = one_line(capsys, "rtt", "-c", "nope.yaml", "--from", "0", "--to", "1")
        assert "nope.yaml: no such file" in err and "demo" in err

    def test_a_usage_error_is_one_line(self, capsys):
        assert "the following arguments are required: --from, --to" in one_line(capsys, "rtt")


class TestBoundedResources:
    def test_an_alias_bomb_is_refused_without_expanding_it(self):
        text = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
            f"{k}: &{k} [{', '.join(['*' + p] * 10)}]\n" for p, k in zip("abcdef", "bcdefg"))
        with pytest.raises(InputError, match="expands to more than 1,000,000 values"):
            parse_yaml(text, "bomb.yaml")

    def test_a_file_larger_than_any_config_is_not_read_whole(self, tmp_path):
        from meshemu.config import MAX_YAML_BYTES, load_yaml

        path = tmp_path / "big.yaml"
        path.write_text("a: 1\n" + "#" * MAX_YAML_BYTES)
        with pytest.raises(InputError, match="big.yaml: is larger than the 4 MiB"):
            load_yaml(path)


# -- a second sweep (issue 10): ~300 more inputs across every command, file and wire -------------------
def no_shards(monkeypatch):
    from meshemu.serving import launch

    def refuse(*args, **kwargs):
        raise AssertionError("a shard process was started")

    monkeypatch.setattr(launch, "start_loopback", refuse)


class TestSecondSweepCommandLine:
    @pytest.mark.parametrize("out,words", [
        ("", ["--out is empty"]),
        ("{tmp}/", ["--out names a folder", "series.npz"]),  # before: saved beside the folder, as {tmp}.npz
        ("{tmp}", ["--out names a folder"]),
    ])
    def test_topology_out_that_is_no_file(self, capsys, tmp_path, out, words):
        # before: '' was a ValueError traceback from pathlib
        err = one_line(capsys, "topology", "--duration", "1", "--out", out.format(tmp=tmp_path))
        assert all(w in err for w in words), err
        assert not list(tmp_path.parent.glob(f"{tmp_path.name}.npz"))

    @pytest.mark.parametrize("out,fmt,words", [
        ("/proc/x.csv", [], ["/proc/x.csv: cannot write"]),
        ("x.txt", [], ["cannot tell the format from 'x.txt'"]),
        ("{tmp}", ["-f", "csv"], ["is a folder"]),
        ("", [], ["--out is empty"]),
    ])
    def test_rtt_output_is_checked_before_the_work(self, capsys, monkeypatch, tmp_path, out, fmt, words):
        from meshemu.cli import topology

        def no_work(*args, **kwargs):
            raise AssertionError("the series was computed before --out was checked")

        monkeypatch.setattr(topology, "compute_series", no_work)
        err = one_line(capsys, "rtt", "--from", "Paris", "--to", "Moscow", "--duration", "1", "--out",
                       out.format(tmp=tmp_path), *fmt)
        assert all(w in err for w in words), err

    @pytest.mark.parametrize("option", ["-c", "--tles", "--isls", "--grid", "--ground-stations", "--epoch"])
    def test_an_empty_value_is_not_taken_for_no_option(self, capsys, option):
        # before: 'rtt -c ""' (an unset shell variable) quietly used demo, '-g ""' the 100 cities
        err = one_line(capsys, "rtt", "--from", "0", "--to", "1", "--duration", "1", option, "")
        assert f"{option.replace('-c', '--constellation')} is empty" in err, err

    @pytest.mark.parametrize("argv,words", [
        (["emulate", "--view-port", "70000"], ["--view-port", "70000 is not a TCP port"]),
        (["emulate", "--view-port", "-1"], ["--view-port"]),
        (["emulate", "--prefix", "a/b"], ["--prefix", "namespace prefix 'a/b'"]),
        (["probe", "--prefix", ""], ["--prefix"]),
        (["clean", "--prefix", ""], ["--prefix", "namespace prefix ''"]),  # before: 'removed 0 namespaces'
        (["clean", "--prefix", "../x"], ["--prefix"]),
        (["probe", "--repeat", "100000000"], ["--repeat", "outside [1, 1000]"]),  # before: ran for ever
        (["emulate", "--time-scale", "1e-300"], ["--time-scale", "within [1e-6, 1e6]"]),  # a mesh that never moves
        (["emulate", "--rate-mbps", "1e-9"], ["--rate-mbps", "outside [0.001, 1e+07] Mbit/s"]),  # netem: no limit
    ])
    def test_emulation_options_refused_while_parsing(self, capsys, argv, words):
        err = one_line(capsys, *argv)
        assert all(w in err for w in words), err

    @pytest.mark.parametrize("argv,words", [
        (["--seed", "99999999999999999999999"], ["--seed", "below 2^63"]),  # before: TypeError traceback
        (["--loopback", "--step-timeout", "1e300"], ["--step-timeout", "outside (0, 86400] s"]),
        (["--loopback", "--timeout", "1e300"], ["--timeout"]),  # before: OverflowError inside a shard
        (["--model", "/dev/zero"], ["/dev/zero: is not a regular file"]),  # before: hashed for ever
        (["--model", "/dev/null"], ["/dev/null: is not a regular file"]),  # before: 'no such file'
        (["--model", "", "--loopback"], ["the model is empty"]),  # before: 'config.json: cannot read'
        (["--model", "tiny:gpt9:0", "--loopback"], ["unknown tiny-model architecture 'gpt9'"]),  # was a llama
        (["--model", "tiny:llama:0:vocab_size=3", "--loopback"], ["vocab_size 4 or more"]),  # ZeroDivisionError
        (["--model", "tiny:llama:0:bogus=3", "--loopback"], ["unknown tiny-model setting 'bogus'", "n_layers"]),
        (["--model", "tiny:qwen3:0:name=1", "--loopback"], ["unknown tiny-model setting 'name'"]),
        (["--model", "tiny:llama:0:bos_token_id=99999", "--loopback"], ["outside the vocabulary of 320"]),
        # before: options of the mesh were dropped without a word on --loopback, or with no shards at all
        (["--model", "tiny:llama:0", "--loopback", "--ground-station", "Atlantis"],
         ["--ground-station goes with --constellation", "nothing on --loopback"]),
        (["--model", "tiny:llama:0", "--loopback", "--placement", "spread", "--duration", "5"],
         ["--placement, --duration go with --constellation"]),
        (["--time-scale", "3"], ["--time-scale goes with --constellation"]),
    ])
    def test_generate_options(self, capsys, monkeypatch, argv, words):
        no_shards(monkeypatch)
        err = one_line(capsys, "generate", "hi", "--max-new-tokens", "2", *argv)
        assert all(w in err for w in words), err

    @pytest.mark.parametrize("argv,words", [
        (["--concurrency", "x"], ["--concurrency 'x'"]),  # before: ValueError traceback
        (["--concurrency", "0"], ["--concurrency '0'", "[1, 1024]"]),  # before: a row of 0 requests
        (["--layouts", "100x100"], ["--layouts 100x100", "pipeline stages"]),  # before: 10,000 shards started
        (["--layouts", "1x1:allgather"], ["bad layout '1x1:allgather'"]),
        (["--layouts", "0x1"], ["tp and pp must be at least 1"]),
    ])
    def test_bench_serving_options_before_a_shard_starts(self, capsys, monkeypatch, argv, words):
        no_shards(monkeypatch)
        err = one_line(capsys, "bench", "serving", "--model", "tiny:llama:0", *argv)
        assert all(w in err for w in words), err


class TestSecondSweepShaping:
    @pytest.mark.parametrize("backend", ["none", "delayline"])
    def test_a_delay_only_backend_refuses_rate_and_loss(self, backend):
        # before: 'none' dropped the loss (and the rate) without a word and the run went on
        from meshemu.emulation.shaping import SHAPERS, ShapingConfig, check_backend

        for config in (ShapingConfig(loss=0.1), ShapingConfig(rate_bps=20e6)):
            with pytest.raises(InputError, match=f"the {backend} shaper does delay only"):
                check_backend(backend, config)
            with pytest.raises(InputError, match="does delay only"):
                SHAPERS[backend](mesh=None, config=config)
        check_backend("netem", ShapingConfig(loss=0.1))

    @pytest.mark.parametrize("rate_bps,loss", [(1e-300, 0.0), (1e300, 0.0), (0.0, 0.0), (None, 5.0),
                                               (None, float("nan"))])
    def test_rates_netem_cannot_carry(self, rate_bps, loss):
        # before: 1e-300 bit/s was 0 bytes/s to netem (no limit at all); 1e300 a struct.error as root
        from meshemu.emulation.shaping import ShapingConfig

        with pytest.raises(InputError):
            ShapingConfig(rate_bps=rate_bps, loss=loss)


class TestSecondSweepRunCheck:
    @pytest.mark.parametrize("old,new,words", [
        ("backend: auto}", "backend: none, rate_mbps: 10}", ["the none shaper does delay only"]),
        ("backend: auto}", "backend: netem, rate_mbps: 1e-300}", ["shaping.rate_mbps 1e-300 is outside"]),
        ("backend: auto}", "backend: netem, rate_mbps: 1e300}", ["shaping.rate_mbps 1e+300 is outside"]),
        ("gap_s: 20", "gap_s: 1e300", ["workload.gap_s must be at most 604,800 s"]),
        ("seed: 0", "seed: 1e30", ["seed must be at most 2^63"]),
        ("time_scale: 2.0", "time_scale: 1e-300", ["time_scale must be greater than 0", "within [1e-6, 1e6], got 1e-300"]),
        ("source: default", "source: ''", ["model.source is empty"]),
        ("source: default, compute: real", "source: 'preset:qwen3-8b', compute: real",
         ["model.compute: preset:qwen3-8b has no weights"]),  # before: OK, then refused by every shard
        ("seed: 0", "seed: 0\nsweep: {field: source, values: [x]}", ["cannot sweep 'source'"]),  # a no-op
        ("seed: 0", "seed: 0\nsweep: {field: time_scale, values: [1, 1]}",  # before: two runs, one folder
         ["sweep.values[1]", "run name 'quickstart-time_scale1' that sweep.values[0] gives too"]),
    ])
    def test_refused_naming_file_and_key(self, capsys, tmp_path, old, new, words):
        assert old in QUICKSTART
        (tmp_path / "e.yaml").write_text(QUICKSTART.replace(old, new, 1))
        err = one_line(capsys, "run", tmp_path / "e.yaml", "--check")
        assert f"{tmp_path / 'e.yaml'}" in err and all(w in err for w in words), err


def _series_file(tmp_path, **changes):
    """A small real series saved, with arrays replaced by ``changes`` (None: left out)."""
    import numpy as np

    from meshemu.constellation import TimeGrid, default_ground_stations, load_constellation
    from meshemu.links import compute_link_series

    c = load_constellation("demo")
    s = compute_link_series(c, default_ground_stations()[:3], TimeGrid.from_window(c.epoch_utc, start_s=0,
                                                                                    duration_s=3, step_s=1))
    path = tmp_path / "s.npz"
    s.save(path)
    arrays = dict(np.load(path))
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v(arrays) if callable(v) else v
    np.savez(path, **arrays)
    return path


class TestSecondSweepLinkSeriesFiles:
    @pytest.mark.parametrize("changes,words", [
        # before: a ValueError from scipy when routed
        ({"links": lambda a: a["links"] + [0, 10_000]}, ["a link names a node outside"]),
        ({"times_s": lambda a: a["times_s"][:2]}, ["length_m is (3,"]),  # before: drawn as if fine
        ({"times_s": lambda a: a["times_s"][::-1].copy()}, ["times_s must be", "increasing"]),
        ({"node_names": lambda a: a["node_names"][:0]}, ["satellites among 0 nodes"]),
        ({"n_satellites": -5}, ["-5 satellites"]),  # before: IndexError in the view
        ({"length_m": lambda a: a["length_m"] * float("inf")}, ["length_m must be metres"]),
        ({"format_version": lambda a: a["format_version"].reshape(1)}, ["link series format [1] is not 1"]),
        ({"positions_m": None}, ["'positions_m is not a file in the archive'"]),
    ])
    def test_a_foreign_or_inconsistent_series(self, tmp_path, changes, words):
        from meshemu.links import LinkSeries

        path = _series_file(tmp_path, **changes)
        with pytest.raises(InputError) as err:
            LinkSeries.load(path)
        assert str(err.value).startswith(f"{path}: ") and all(w in str(err.value) for w in words), err.value

    @pytest.mark.parametrize("content,words", [
        (b"PK\x03\x04 truncated", ["not a meshemu link series"]),  # before: BadZipFile traceback
        (b"\x93NUMPY", ["not a meshemu link series"]),
        (None, ["a single array (.npy), not an .npz archive"]),
    ])
    def test_files_that_are_no_archive(self, tmp_path, content, words):
        import numpy as np

        from meshemu.links import LinkSeries

        path = tmp_path / "x.npz"
        if content is None:
            np.save(tmp_path / "x.npy", np.zeros(3))
            (tmp_path / "x.npy").rename(path)
        else:
            path.write_bytes(content)
        with pytest.raises(InputError) as err:
            LinkSeries.load(path)
        assert all(w in str(err.value) for w in words), err.value

    def test_a_saved_series_loads(self, tmp_path):
        from meshemu.links import LinkSeries

        assert LinkSeries.load(_series_file(tmp_path)).n_steps == 3


class TestSecondSweepServingJobs:
    """``python -m meshemu.serving.client_process --job FILE``: what the JSON may hold, refused before any connection."""

    @staticmethod
    def job_text(change) -> str:
        import json

        from meshemu.serving.job import Request, ServingJob, ServingPlan

        job = ServingJob(ServingPlan("tiny:llama:0"), (Request((1, 2, 3), request_id="r0"),))
        data = json.loads(job.placed(["127.0.0.1:5000"], ["p00s00"]).to_json())
        change(data)
        return json.dumps(data)

    @pytest.mark.parametrize("change,words", [
        (lambda d: d.update(concurrency=10**30), ["concurrency must be within [1, 1,024]"]),
        # the next four were ValueErrors in the protobuf encoder, i.e. tracebacks in the client
        (lambda d: d["requests"][0].update(max_new_tokens=-1), ["max_new_tokens must be at least 1"]),
        (lambda d: d["requests"][0].update(seed=10**30), ["seed must be a whole number in [0, 2^64)"]),
        (lambda d: d["requests"][0].update(prompt=[10**30]), ["token id 1000000000000000000000000000000"]),
        (lambda d: d["requests"][0].update(stop_ids=[-1]), ["stop_ids: token id -1"]),
        (lambda d: d["requests"][0].update(temperature=-5), ["temperature must be a finite number"]),
        (lambda d: d["requests"][0].update(top_p=7), ["top_p must be in (0, 1]"]),
        (lambda d: d["requests"][0].update(request_id="x" * 1000), ["request_id is 1,000 characters"]),
        (lambda d: d.update(gap_s=1e300), ["gap_s must be at most 604,800 s"]),  # OverflowError in sleep
        (lambda d: d.update(step_timeout_s=1e300), ["step_timeout_s must be at most 86,400 s"]),
        (lambda d: d["plan"].update(ranks=["nonsense"]), ["shard address 'nonsense' is not IP:PORT"]),
        (lambda d: d["plan"].update(ranks=["127.0.0.1:99999"]), ["is not IP:PORT"]),
        (lambda d: d["plan"].update(tp=2, ranks=["a:1", "b:2"]), ["1 node names for 2 shard addresses"]),
        (lambda d: d["plan"].update(peak_flops=-1), ["peak_flops must be a finite number, 0 or more"]),
        (lambda d: d["plan"].update(model="preset:qwen3-8b"), ["has no weights: serve it with compute device"]),
        (lambda d: d["requests"].append(dict(d["requests"][0])), ["requests[1] has the request_id of requests[0]"]),
    ])
    def test_refused(self, change, words):
        from meshemu.serving.job import ServingJob

        with pytest.raises(InputError) as err:
            ServingJob.from_json(self.job_text(change))
        assert all(w in str(err.value) for w in words), err.value

    def test_json_nested_too_deeply(self):
        # before: a RecursionError traceback
        from meshemu.serving.job import ServingJob

        with pytest.raises(InputError, match="nested too deeply"):
            ServingJob.from_json('{"a": ' * 100_000 + "1" + "}" * 100_000)

    def test_numpy_token_ids_are_plain_ints(self):
        import numpy as np

        from meshemu.serving.job import Request

        assert Request(np.array([1, 2], dtype=np.int64)).prompt == (1, 2)


class TestSecondSweepModels:
    @pytest.mark.parametrize("peaks", [{"peak_flops": float("nan")}, {"peak_flops": -1.0},
                                       {"peak_bandwidth_Bps": float("inf")}])
    def test_a_device_with_impossible_peaks(self, peaks):
        # before: a NaN peak made every wait NaN, and DeviceClock.settle spun on it for ever
        from meshemu.serving.compute import parse_compute

        with pytest.raises(InputError, match="must be a finite number greater than 0"):
            parse_compute("device:h100", **peaks)

    def test_a_nan_wait_returns(self):
        from meshemu.serving.compute import DeviceClock

        clock = DeviceClock()
        clock.owe(float("nan"))
        clock.settle()  # before: never returned

    def test_weight_cache_entries_are_readable_by_other_users(self, tmp_path):
        # before: 0600, since safetensors makes the file anew after the chmod to 0644
        import numpy as np
        from safetensors.numpy import save_file

        from meshemu.model.weight_cache import _replace_with

        target = tmp_path / "e.safetensors"
        _replace_with(target, lambda tmp: save_file({"a": np.zeros(2, np.float32)}, tmp))
        assert target.stat().st_mode & 0o777 == 0o644


class TestSecondSweepConstellationFiles:
    @pytest.mark.parametrize("text,words", [
        # before: PyYAML's bare ValueError, a traceback
        (f"name: x\nepoch: 2026-02-30T00:00:00Z\nshells:\n{SHELL}",
         ["c.yaml:2: '2026-02-30T00:00:00Z' is not a date"]),
        # before: an OverflowError while linking the seam
        ("name: x\nshells:\n" + SHELL.replace("}", ", phasing: 1e30}"), ["phasing (Walker's F)", "[0, 3]"]),
        ("name: x\nshells:\n" + SHELL.replace("}", ", phasing: -7}"), ["phasing (Walker's F)"]),
        ("name: x\nshells:\n" + SHELL.replace("}", ", raan_spread_deg: 1e300}"), ["raan_spread_deg must be within"]),
    ])
    def test_refused_naming_file_and_line(self, capsys, tmp_path, text, words):
        (tmp_path / "c.yaml").write_text(text)
        err = one_line(capsys, "rtt", "-c", tmp_path / "c.yaml", "--from", "0", "--to", "1", "--duration", "1")
        assert all(w in err for w in words), err


class TestSecondSweepRecordsFolder:
    @pytest.mark.parametrize("out,words", [
        ("/proc/xx", ["/proc/xx: cannot write into /proc"]),  # before: FileNotFoundError after the whole run
        ("{tmp}/f/sub", ["cannot make the folder: ", "/f is a file"]),
        ("{tmp}/f", ["is a file; --out wants a folder"]),
        ("", ["--out is empty"]),
    ])
    def test_emulate_out_is_checked_before_the_run_and_nothing_is_made(self, tmp_path, out, words):
        from meshemu.cli.output import check_output_dir

        (tmp_path / "f").write_text("x")
        with pytest.raises(InputError) as err:
            check_output_dir(out.format(tmp=tmp_path))
        assert all(w in str(err.value) for w in words), err.value
        assert check_output_dir(tmp_path / "new" / "deeper") and not (tmp_path / "new").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


FAILOVER = (Path(__file__).parents[1] / "experiments" / "failover.yaml").read_text()


class TestFaultsCheck:
    """``--check`` refuses a fault a root run would refuse, naming the file and the fault."""

    @pytest.mark.parametrize("old,new,words", [
        ('satellite: "rank:2"', 'satellite: "rank:9"', ["faults", "ranks 0-3"]),
        ('satellite: "rank:2"', 'satellite: "p09s09"', ["faults", "unknown node 'p09s09'"]),
        ('satellite: "rank:2"', 'satellite: "Delhi"', ["faults", "a ground station"]),
        ("at_s: 12,", "at_s: 900,", ["faults", "the window is 200 s long"]),
        ("for_s: 15}", "for_s: 15, reboot_s: 3}", ["faults[0]", "for_s (dark this long) or reboot_s"]),
        ("for_s: 15}", "for_s: -1}", ["faults[0]", "for_s must be greater than 0 s"]),
        ('satellite: "rank:2", for_s: 15', 'link: [p00s01, p00s05], for_s: 15', ["no link joins p00s01 and p00s05"]),
        ('satellite: "rank:2", for_s: 15', 'link: [p00s01, p00s02], reboot_s: 15', ["reboot_s is for a satellite"]),
        ("policy: replace", "policy: teleport", ["recovery.policy", "'teleport' is not one of"]),
        ("detect_timeout_s: 5.0", "detect_timeout_s: 0", ["detect_timeout_s must be greater than 0 s"]),
        ("detect_timeout_s: 5.0", "detect_timeout_s: 5.0, weights: uplink", ["uplink_rate_mbps"]),
    ])
    def test_refused_naming_file_and_key(self, capsys, tmp_path, old, new, words):
        assert old in FAILOVER, old
        (tmp_path / "f.yaml").write_text(FAILOVER.replace(old, new, 1))
        err = one_line(capsys, "run", tmp_path / "f.yaml", "--check")
        assert f"{tmp_path / 'f.yaml'}" in err and all(w in err for w in words), err

    def test_the_shipped_failover_passes(self, capsys):
        assert main(["run", "experiments/failover.yaml", "--check"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("job,words", [("DIR", "Is a directory"), ("/nonexistent.json", "No such file"),
                                       ("BAD", "not JSON")])
def test_the_client_process_answers_a_bad_job_with_one_error_event(tmp_path, job, words):
    import json
    import subprocess
    import sys

    (tmp_path / "bad.json").write_text("{nope")
    path = {"DIR": str(tmp_path), "BAD": str(tmp_path / "bad.json")}.get(job, job)
    out = subprocess.run([sys.executable, "-m", "meshemu.serving.client_process", "--job", path],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    [event] = [json.loads(line) for line in out.stdout.splitlines()]
    assert event["event"] == "error" and words in event["message"], event
