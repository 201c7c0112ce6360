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
