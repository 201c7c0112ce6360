"""Experiment files: validation, sweeps, and the shipped experiments (no root)."""

from pathlib import Path

import pytest

from meshemu.cli import main
from meshemu.errors import InputError
from meshemu.experiments.spec import expand, load_experiment

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_shipped_experiments_are_valid(path):
    spec = load_experiment(path)
    for one in expand(spec):
        assert one.parallelism.tp >= 1 and one.workload.max_new_tokens >= 1


def test_the_four_scenarios_and_the_quickstart_ship():
    names = {p.stem for p in EXPERIMENTS}
    assert {"quickstart", "compute12-query", "tp-vs-pp-starlink", "placement", "handover"} <= names


def write(tmp_path, text):
    path = tmp_path / "e.yaml"
    path.write_text(text)
    return path


class TestValidation:
    def test_unknown_key_names_file_and_key(self, tmp_path):
        with pytest.raises(InputError, match=r"e.yaml: workload.max_tokens: unknown key"):
            load_experiment(write(tmp_path, "name: x\nworkload: {max_tokens: 3}\n"))

    def test_wrong_type(self, tmp_path):
        with pytest.raises(InputError, match=r"e.yaml: parallelism.tp: expected an integer"):
            load_experiment(write(tmp_path, "name: x\nparallelism: {tp: two}\n"))

    def test_bad_choice(self, tmp_path):
        with pytest.raises(InputError, match=r"parallelism.allreduce: 'tree' is not one of"):
            load_experiment(write(tmp_path, "name: x\nparallelism: {allreduce: tree}\n"))

    def test_sweep_of_a_field_that_does_not_exist(self, tmp_path):
        with pytest.raises(InputError, match=r"cannot sweep 'parallelism.tq'"):
            load_experiment(write(tmp_path, "name: x\nsweep: {field: parallelism.tq, values: [1]}\n"))

    def test_sweep_value_of_the_wrong_type(self, tmp_path):
        # refused on loading, naming the file and the value, so --check catches it
        with pytest.raises(InputError, match=r"e\.yaml: sweep\.values\[1\]: 'many' cannot be parallelism\.tp: "
                                              r"expected an integer"):
            load_experiment(write(tmp_path, "name: x\nsweep: {field: parallelism.tp, values: [1, many]}\n"))

    def test_probe_must_be_a_pair(self, tmp_path):
        with pytest.raises(InputError, match=r"probes"):
            load_experiment(write(tmp_path, "name: x\nprobes: [[Paris]]\n"))

    def test_cli_says_it_in_one_line(self, tmp_path, capsys):
        path = write(tmp_path, "name: x\nwindoww: {}\n")
        assert main(["run", str(path), "--check"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "windoww: unknown key" in err[0]


class TestSweeps:
    def test_one_run_per_value_named_after_it(self, tmp_path):
        spec = load_experiment(write(tmp_path, "name: s\nsweep: {field: placement, values: [plane, spread]}\n"))
        runs = expand(spec)
        assert [r.name for r in runs] == ["s-plane", "s-spread"] and [r.placement for r in runs] == ["plane", "spread"]

    def test_a_whole_section_can_be_swept(self, tmp_path):
        spec = load_experiment(write(tmp_path, "name: s\nsweep:\n  field: parallelism\n  values:\n"
                                               "    - {tp: 2, pp: 1, allreduce: direct}\n    - {tp: 1, pp: 2}\n"))
        runs = expand(spec)
        assert [(r.parallelism.tp, r.parallelism.pp, r.parallelism.allreduce) for r in runs] == [
            (2, 1, "direct"), (1, 2, "ring")]
        assert runs[0].name == "s-tp2-pp1-direct"


class TestSweepsOverSeveralFields:
    def test_each_value_sets_every_field(self, tmp_path):
        spec = load_experiment(write(tmp_path, "name: s\nsweep:\n  field: [constellation, parallelism.tp]\n"
                                               "  values: [[demo, 2], [compute-12, 1]]\n"))
        runs = expand(spec)
        assert [(r.name, r.constellation, r.parallelism.tp) for r in runs] == [
            ("s-demo-tp2", "demo", 2), ("s-compute-12-tp1", "compute-12", 1)]

    def test_names_replace_the_labels(self, tmp_path):
        spec = load_experiment(write(tmp_path, "name: s\nsweep:\n  field: [constellation, placement]\n"
                                               "  values: [[demo, 'list:p00s00'], [demo, plane]]\n"
                                               "  names: [one, two]\n"))
        assert [r.name for r in expand(spec)] == ["s-one", "s-two"]

    def test_a_value_of_the_wrong_length_names_the_value(self, tmp_path):
        path = write(tmp_path, "name: s\nsweep:\n  field: [constellation, parallelism.tp]\n  values: [[demo]]\n")
        with pytest.raises(InputError, match=r"sweep\.values\[0\]: .*lists of 2, one per field"):
            load_experiment(path)

    def test_names_must_match_the_values(self, tmp_path):
        path = write(tmp_path, "name: s\nsweep: {field: placement, values: [plane, spread], names: [a]}\n")
        with pytest.raises(InputError, match="1 names for 2 values"):
            load_experiment(path)

    def test_a_field_named_twice_is_refused(self, tmp_path):
        path = write(tmp_path, "name: s\nsweep: {field: [placement, placement], values: [[plane, spread]]}\n")
        with pytest.raises(InputError, match="name each swept field once"):
            load_experiment(path)

    def test_an_unknown_field_among_several(self, tmp_path):
        path = write(tmp_path, "name: s\nsweep: {field: [placement, nope], values: [[plane, 1]]}\n")
        with pytest.raises(InputError, match="cannot sweep 'nope'"):
            load_experiment(path)


@pytest.fixture(scope="module")
def runs():
    return expand(load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "formation-vs-starlink.yaml"))


class TestFormationVsStarlink:
    """The shipped experiment where TP should win: TP 8 inside the formation, PP 8 across Starlink shell 1."""

    def test_tp_8_in_the_formation_and_pp_8_across_starlink(self, runs):
        got = {r.name.removeprefix("formation-vs-starlink-"): (r.constellation, r.parallelism.tp, r.parallelism.pp)
               for r in runs}
        assert got == {"formation-tp8-direct": ("formation-81", 8, 1), "formation-tp8-ring": ("formation-81", 8, 1),
                       "formation-pp8": ("formation-81", 1, 8), "starlink-pp8": ("starlink-shell1", 1, 8)}
        for r in runs:
            assert (r.model.source, r.model.compute, r.ground_station) == ("preset:qwen3-32b", "device:h100", "London")
            assert r.workload.requests * r.workload.max_new_tokens <= 16  # few tokens: shell 1 is 1,684 nodes

    def test_the_formations_ranks_form_a_ring_of_grid_neighbours(self, runs):
        from meshemu.constellation import load_constellation

        c = load_constellation("formation-81")
        links = {tuple(p) for p in c.isl_pairs.tolist()}
        for r in runs:
            if r.constellation != "formation-81":
                continue
            ranks = [c.satellite_names.index(f"cluster-p{n[1:3]}-s{n[4:6]}") for n in r.placement[5:].split(",")]
            assert len(ranks) == 8
            ring = zip(ranks, ranks[1:] + ranks[:1])
            assert all((min(a, b), max(a, b)) in links for a, b in ring)

    def test_a_pass_of_the_formation_over_london_covers_the_window(self, runs):
        from meshemu.experiments.plan import build_series

        formation = next(r for r in runs if r.constellation == "formation-81")
        series = build_series(formation)
        london = series.short_index("London")
        gsl = series.links[:, 1] == london
        assert series.up[:, gsl].any(axis=1).all()  # the client sees the cluster at every step


def test_an_experiment_chooses_its_routes(tmp_path):
    """``routes:`` reaches the run (a small mesh routed the way big ones are); a wrong mode is one line."""
    from meshemu.experiments.plan import plan_run
    from meshemu.model.tiny import tiny_tokenizer
    from meshemu.serving.compute import load_source

    spec = load_experiment(write(tmp_path, "name: x\nroutes: destinations\nmodel: {source: 'tiny:llama:0'}\n"))
    config, _ = load_source("tiny:llama:0")
    assert plan_run(spec, "tiny:llama:0", config, tiny_tokenizer()).routes == "destinations"
    assert load_experiment(write(tmp_path, "name: x\n")).routes == "auto"
    with pytest.raises(InputError, match=r"routes: 'some' is not one of"):
        load_experiment(write(tmp_path, "name: x\nroutes: some\n"))
