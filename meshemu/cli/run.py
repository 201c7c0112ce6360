"""``meshemu run experiments/NAME.yaml``: an experiment from mesh up to report."""

from __future__ import annotations

import sys

from meshemu.cli.types import namespace_prefix


def register(commands, benches):
    p = commands.add_parser("run", help="run an experiment file: mesh, shards, workload, results folder (root)")
    p.add_argument("experiment", metavar="FILE.yaml", help="an experiment, e.g. experiments/quickstart.yaml")
    p.add_argument("--out", "-o", metavar="DIR", help="results folder (default: a new results/NAME-TIMESTAMP)")
    p.add_argument("--check", action="store_true", help="check everything that can be known without root (files, names, placement, model, "
                        "layout, sizes) for the file and every sweep value, and stop")
    p.add_argument("--view", action="store_true", help="serve a live web view of the run on 127.0.0.1 (--view-port)")
    p.add_argument("--view-port", type=int, default=8765, metavar="PORT", help="port of --view (8765; 0 picks a free one)")
    p.add_argument("--prefix", type=namespace_prefix, default="meshemu",
                   help="namespace prefix, for runs side by side on one machine (meshemu; 'meshemu clean --prefix' "
                        "removes what a killed run left)")
    p.set_defaults(run=run)


def run(args) -> int:
    from meshemu.experiments.spec import expand, load_experiment

    spec = load_experiment(args.experiment)
    specs = expand(spec)
    reports = [_checked(s, len(specs)) for s in specs]  # a root run refuses nothing that --check lets through
    if args.check:
        for s, report in zip(specs, reports):
            print(report.line(s))
        return 0
    from meshemu.emulation.kernel import require_root
    from meshemu.experiments.runner import run_file

    require_root()
    results = _run_with_view(args, specs) if args.view else run_file(args.experiment, args.out, prefix=args.prefix)
    folder = results[0].folder if len(results) == 1 else results[0].folder.parent
    for r in results:
        s = r.summary
        print(f"meshemu: {s['name']}: {s['requests'] - s['failed']}/{s['requests']} requests, TTFT {s['ttft_ms']} ms "
              f"(predicted {s['predicted_ttft_ms']}), TPOT {s['tpot_ms']} ms (predicted {s['predicted_tpot_ms']}, "
              f"{s['tpot_error_pct']} %)", file=sys.stderr)
    print(f"meshemu: results in {folder}/ (report.md)", file=sys.stderr)
    print(folder / "report.md")
    dead = [r for r in results if r.summary["requests"] and r.summary["failed"] == r.summary["requests"]]
    if dead:  # the results folder says why; a run that answered nothing must not look like a success
        s = dead[0].summary
        print(f"meshemu: error: {s['name']}: all {s['requests']} requests failed; the first error is in "
              f"{dead[0].folder}/report.md", file=sys.stderr)
        return 1
    return 0


def _checked(spec, n_specs: int):
    """The check of one expanded spec; in a sweep, its error says which value of the sweep it was."""
    from meshemu.errors import InputError
    from meshemu.experiments.check import check_experiment

    try:
        return check_experiment(spec)
    except InputError as err:
        if n_specs == 1:
            raise
        raise InputError(f"{err} (in the sweep's run {spec.name})") from None


def _log(line: str) -> None:
    print(f"meshemu: {line}", file=sys.stderr)


def _run_with_view(args, specs) -> list:
    """The run, with a live page that follows each experiment in turn."""
    from meshemu.experiments.runner import run_file
    from meshemu.view.live_run import RunView

    with RunView(specs, port=args.view_port, log=_log) as view:  # before the mesh: a port in use stops us at once
        _log(f"live view at {view.url}")
        results = run_file(args.experiment, args.out, on_step=view.on_step, on_event=view.on_event, prefix=args.prefix)
    shown, ran = [" ".join(p) for p in view.placements], [r.summary["rank_nodes"] for r in results]
    if shown != ran[:len(shown)]:
        _log(f"live view: the page placed the ranks on {shown}, the run on {ran}")
    return results
