"""Generated bad input: the parsers and validators raise only meshemu's InputError, never hang, and never
misread a field they accept (issue 10). Derandomized and small, so CI runs the same few seconds every time."""

import math
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshemu.config import parse_yaml
from meshemu.constellation import load_constellation, parse_tles, read_isl_pairs
from meshemu.constellation.ground import parse_ground_stations
from meshemu.constellation.tle import format_tle, tle_checksum
from meshemu.errors import InputError
from meshemu.experiments.spec import expand, load_experiment

# deadline: one example must not take long (a hang or a huge allocation shows as a failure, not a stall)
FAST = settings(max_examples=60, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

L1, L2 = format_tle(7, 2026, 12.5, 53.0, 120.0, 0.0012, 45.0, 300.0, 15.19)
PAIR = f"SAT\n{L1}\n{L2}\n"
# characters a careless or hostile file holds: digits, signs, blanks, letters, control and non-ASCII
JUNK = st.sampled_from(list("0123456789 .+-eEx\t\x00é٣\u200b\ufeff,#\"'\\:{}[]&*!|>%@`\r\n"))


def only_input_errors(call, *args):
    """``call(*args)``, where an InputError is an answer and anything else escapes to fail the test."""
    try:
        return call(*args)
    except InputError as err:
        assert "\n" not in str(err).strip(), "an error is one line"
        return None


@st.composite
def mutated_tle(draw):
    """The element set with a few characters replaced, inserted or deleted; checksums fixed up or not."""
    lines = [L1, L2]
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(0, 1))
        pos = draw(st.integers(0, 68))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        char = draw(JUNK)
        line = lines[k]
        lines[k] = (line[:pos] + char + line[pos + 1:] if op == "replace" else
                    line[:pos] + char + line[pos:] if op == "insert" else line[:pos] + line[pos + 1:])
    if draw(st.booleans()):
        lines = [l[:68] + str(tle_checksum(l)) if len(l) == 69 else l for l in lines]
    return lines


class TestTle:
    @FAST
    @given(mutated_tle())
    def test_a_mutated_element_set_is_refused_or_read_exactly_as_written(self, lines):
        parsed = only_input_errors(parse_tles, "SAT\n" + "\n".join(lines) + "\n", "m.tle")
        if parsed is None:
            return
        tle = parsed.tles[0]
        sat = only_input_errors(tle.satrec)
        if sat is None:
            return
        # whatever was accepted is what the columns say: sgp4 did not stop early at a stray character
        l1, l2 = tle.line1, tle.line2
        assert math.isclose(sat.epochdays, float(l1[20:32]), abs_tol=1e-8)
        assert math.isclose(math.degrees(sat.inclo), float(l2[8:16]), abs_tol=1e-6)
        assert math.isclose(math.degrees(sat.nodeo), float(l2[17:25]), abs_tol=1e-6)
        assert math.isclose(sat.ecco, float("0." + l2[26:33]), abs_tol=1e-9)
        assert math.isclose(sat.no_kozai * 1440 / (2 * math.pi), float(l2[52:63]), rel_tol=1e-9)

    @FAST
    @given(st.lists(st.one_of(st.sampled_from([L1, L2, "SAT", "72 22", "4 x", "0 0", "", "1 2 3"]),
                              st.text(JUNK, max_size=80)), max_size=12))
    def test_any_arrangement_of_lines(self, lines):
        parsed = only_input_errors(parse_tles, "\n".join(lines), "h.txt")
        if parsed is not None:
            assert parsed.tles and all(len(t.line1) == len(t.line2) == 69 for t in parsed.tles)

    @FAST
    @given(st.binary(max_size=300))
    def test_bytes_from_anywhere(self, data):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "b.tle"
            path.write_bytes(data)
            from meshemu.constellation import read_tles

            only_input_errors(read_tles, path)


class TestHypatiaIsls:
    @FAST
    @given(st.lists(st.one_of(st.tuples(st.integers(-3, 70), st.integers(-3, 70)).map(lambda p: f"{p[0]} {p[1]}"),
                              st.text(JUNK, max_size=20)), max_size=10))
    def test_isl_lines(self, lines):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "isls.txt"
            path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
            pairs = only_input_errors(read_isl_pairs, path, 64)
            if pairs is not None:
                assert ((pairs >= 0) & (pairs < 64)).all() and (pairs[:, 0] < pairs[:, 1]).all()


CELL = st.one_of(st.sampled_from(["Paris", "0", "48.85", "2.35", "-91", "181", "nan", "inf", "1e400", "", " ",
                                  "name", "latitude_deg", "longitude_deg", "elevation_m", "lat", "42"]),
                 st.text(JUNK, max_size=8))


class TestGroundStations:
    @FAST
    @given(st.lists(st.lists(CELL, max_size=6), max_size=6))
    def test_rows_of_anything(self, rows):
        text = "\n".join(",".join(r) for r in rows)
        stations = only_input_errors(parse_ground_stations, text, "g.csv")
        for s in stations or ():
            assert -90 <= s.latitude_deg <= 90 and -180 <= s.longitude_deg <= 180 and s.name and not s.name.isdigit()


# Values that break things: wrong types, non-finite, negative, huge, nested.
VALUE = st.one_of(st.sampled_from([None, True, 0, -1, 1, 2, 3, 10**9, 2**63, 0.5, -0.0, math.nan, math.inf,
                                   -math.inf, 1e300, "", "x", "../../x", "1e12", "demo", "Paris", "plane",
                                   "list:p00s00,p00s01", "device:h100", [], {}, [1, 2], {"a": 1}]),
                  st.text(JUNK, max_size=6))
SHELL_KEYS = ["name", "planes", "sats_per_plane", "altitude_km", "inclination_deg", "phasing", "raan_spread_deg",
              "eccentricity", "bogus"]
SHELL_VALUES = {"planes": st.sampled_from([-1, 0, 1, 2, 3, 10**9, 2**63, 1.5, "4"]),
                "sats_per_plane": st.sampled_from([-1, 0, 1, 2, 4, 10**9, 2**63, "4"]),
                "altitude_km": st.sampled_from([50, 550, 800, 1e9, math.nan, "550"]),
                "name": st.sampled_from(["a", "b", "", "../s", "a"])}


@st.composite
def shell(draw):
    base = {"name": "a", "planes": 2, "sats_per_plane": 2, "altitude_km": 800, "inclination_deg": 53}
    for key in draw(st.lists(st.sampled_from(SHELL_KEYS), max_size=3)):
        base[key] = draw(SHELL_VALUES.get(key, VALUE))
    if draw(st.booleans()):
        base.pop(draw(st.sampled_from(sorted(base))), None)
    return base


@st.composite
def constellation_doc(draw):
    doc = {"name": "c", "shells": draw(st.lists(shell(), max_size=3))}
    for key in draw(st.lists(st.sampled_from(["name", "epoch", "isl", "gsl", "tle_file", "description", "typo"]),
                             max_size=2)):
        doc[key] = draw(st.one_of(VALUE, st.fixed_dictionaries({}, optional={
            "max_range_km": VALUE, "min_elevation_deg": VALUE, "policy": VALUE, "pattern": VALUE})))
    return doc


def load_doc(loader, doc, name="x.yaml"):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
        return only_input_errors(loader, path)


class TestConstellationYaml:
    @FAST
    @given(constellation_doc())
    def test_documents_of_bad_values(self, doc):
        c = load_doc(load_constellation, doc)
        if c is not None:
            assert len(set(c.satellite_names)) == c.size > 0

    @FAST
    @given(st.lists(st.one_of(JUNK, st.sampled_from(["name: ", "shells:", "\n  - ", "&a ", "*a ", "<<: ", "!!python/"])),
                    max_size=40).map("".join))
    def test_text_of_anything(self, text):
        load_doc(load_constellation, text)


@st.composite
def experiment_doc(draw):
    doc = {"name": "e"}
    sections = {"window": ["start_s", "duration_s", "step_s"], "shaping": ["backend", "loss", "rate_mbps"],
                "parallelism": ["tp", "pp", "allreduce"], "model": ["source", "compute"],
                "workload": ["prompts", "requests", "max_new_tokens", "concurrency", "gap_s"],
                "sweep": ["field", "values"]}
    for key in draw(st.lists(st.sampled_from(sorted(sections) + ["name", "time_scale", "placement", "probes", "seed",
                                                                 "ground_station", "typo"]), max_size=4)):
        if key in sections:
            doc[key] = {k: draw(VALUE) for k in draw(st.lists(st.sampled_from(sections[key]), max_size=3))}
            if key == "sweep" and draw(st.booleans()):
                doc[key] = {"field": draw(st.sampled_from(["parallelism.tp", "placement", "window.step_s", "name"])),
                            "values": draw(st.lists(VALUE, max_size=3))}
        else:
            doc[key] = draw(VALUE)
    return doc


class TestExperimentYaml:
    @FAST
    @given(experiment_doc())
    def test_documents_of_bad_values(self, doc):
        spec = load_doc(load_experiment, doc)
        if spec is not None:
            assert [s.name for s in expand(spec)]

    @FAST
    @given(st.text(JUNK, max_size=60))
    def test_yaml_text_of_anything(self, text):
        only_input_errors(parse_yaml, text, "t.yaml")


DIM = st.sampled_from([0, 1, 2, 3, 7, 2**20, 2**31, 2**62, -1])


@st.composite
def tensor_message(draw):
    from meshemu.serving.rpc import shard_pb2 as pb

    shape = draw(st.lists(DIM, max_size=8))
    dtype = draw(st.sampled_from(["float32", "float16", "int64", "int32", "float64", "", "bogus"]))
    declared = draw(st.one_of(st.sampled_from([0, 1, 4, 12, 2**30, 2**63]),
                              st.just(max(0, math.prod(shape)) * 4 % 2**64)))
    return pb.Tensor(dtype=dtype, shape=shape, data=draw(st.binary(max_size=64)), chunk=draw(st.integers(0, 4)),
                     n_chunks=draw(st.integers(0, 5)), total_bytes=declared)


class TestTensorMessages:
    @FAST
    @given(st.lists(tensor_message(), min_size=1, max_size=6))
    def test_streams_of_bad_chunks_are_refused_within_the_budget(self, messages):
        from meshemu.serving.tensors import Assembler, Budget

        budget = Budget(1 << 20)
        asm = Assembler(1 << 16, budget)  # no declared size may make it allocate past 64 KiB
        for msg in messages:
            out = only_input_errors(asm.feed, msg)
            if out is not None:
                assert out.nbytes <= 1 << 16
            assert budget.in_flight <= 1 << 16
        asm.reset()
        assert budget.in_flight == 0


OPTION = st.sampled_from(["--constellation", "--tles", "--isls", "--grid", "--ground-stations", "--gsl-max-range-m",
                          "--gsl-min-elevation-deg", "--gsl-policy", "--epoch", "--start", "--duration", "--step",
                          "--from", "--to", "--format", "--out", "--bogus"])
ARG = st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e300", "x", "", "Paris", "Moscow", "99999",
                       "/dev/null", "/proc/x.csv", "/nonexistent/y", "demo", "nope.yaml", "0x0", "2x2", "all", "json",
                       "1999-01-01", "0001-01-01", "é"])


# mostly sensible values, so that generated command lines also get past parsing into the work
VALID = {"--constellation": st.sampled_from(["demo", "compute-12"]), "--gsl-max-range-m": st.sampled_from(["1e6", "3e6"]),
         "--gsl-min-elevation-deg": st.sampled_from(["10", "25", "-5"]), "--gsl-policy": st.sampled_from(["all", "nearest"]),
         "--epoch": st.sampled_from(["2026-01-01T00:00:00Z", "2026-03-01"]), "--start": st.sampled_from(["0", "30", "-60"]),
         "--duration": st.sampled_from(["1", "3"]), "--step": st.sampled_from(["1", "0.5", "10"]),
         "--from": st.sampled_from(["Tokyo", "0", "demo-p00-s00"]), "--to": st.sampled_from(["Delhi", "63", "163"]),
         "--format": st.sampled_from(["csv", "json", "table"])}


class TestCommandLine:
    @settings(max_examples=40, deadline=10000, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(OPTION.flatmap(lambda o: st.tuples(st.just(o), st.one_of(VALID.get(o, ARG), VALID.get(o, ARG),
                                                                              ARG))), max_size=4))
    def test_rtt_with_any_options_ends_in_a_table_or_one_error_line(self, pairs):
        import contextlib
        import io

        from meshemu.cli import main

        argv = ["rtt", "--from", "Paris", "--to", "Moscow", "--duration", "2"] + [x for p in pairs for x in p]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        lines = err.getvalue().strip().splitlines()
        assert "Traceback" not in err.getvalue()
        if code != 0:
            errors = [l for l in lines if l.startswith("meshemu: error: ")]
            assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], lines


# JSON values a hand-edited or hostile job file holds, field by field
JSON_VALUE = st.one_of(st.none(), st.booleans(), st.sampled_from([0, -1, 1, 2**31, 2**32, 2**64, 10**30]),
                       st.sampled_from([0.0, -0.5, 0.5, 1e-300, 1e300, 7.0]), st.text(JUNK, max_size=8),
                       st.lists(st.sampled_from([0, 1, -1, 2**63, 1.5, "x"]), max_size=3), st.builds(dict))


@st.composite
def serving_job_doc(draw):
    """The JSON of a placed job with a few values (or keys) replaced by anything."""
    import json

    from meshemu.serving.job import Request, ServingJob, ServingPlan

    job = ServingJob(ServingPlan("tiny:llama:0", tp=1, pp=2), (Request((1, 2, 3), request_id="r0"),))
    doc = json.loads(job.placed(["127.0.0.1:5000", "127.0.0.1:5001"], ["a", "b"]).to_json())
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([(), ("plan",), ("requests", 0), ("recovery",)]))
        where = doc
        for step in path:
            try:
                where = where[step]
            except (KeyError, IndexError, TypeError):
                break
        if not isinstance(where, dict):
            continue
        key = draw(st.sampled_from(sorted(where) + ["bogus"]))
        if draw(st.integers(0, 9)) == 0:
            where.pop(key, None)
        else:
            where[key] = draw(JSON_VALUE)
    return json.dumps(doc)


class TestServingJobJson:
    @FAST
    @given(serving_job_doc())
    def test_a_job_file_of_bad_values_is_refused_or_encodes(self, text):
        # accepted means the client can send it: every request encodes for the wire without a ValueError
        from meshemu.serving.job import ServingJob
        from meshemu.serving.rpc import shard_pb2 as pb

        job = only_input_errors(ServingJob.from_json, text)
        if job is not None:
            for r in job.requests:
                pb.GenerateRequest(request_id=r.request_id, prompt=r.prompt, max_new_tokens=r.max_new_tokens,
                                   sampling=pb.Sampling(temperature=r.temperature, top_p=r.top_p, seed=r.seed),
                                   stop_ids=r.stop_ids, step_timeout_s=job.step_timeout_s)
