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
