"""``meshemu run experiments/NAME.yaml``: an experiment from mesh up to report."""

from __future__ import annotations

import sys


def register(commands, benches):
    p = commands.add_parser("run", help="run an experiment file: mesh, shards, workload, results folder (root)")
    p.add_argument("experiment", metavar="FILE.yaml", help="an experiment, e.g. experiments/quickstart.yaml")
    p.add_argument("--out", "-o", metavar="DIR", help="results folder (default results/NAME-TIMESTAMP)")
    p.add_argument("--check", action="store_true", help="validate the file (and its sweep) and stop")
    p.set_defaults(run=run)


def run(args) -> int:
    from meshemu.experiments.spec import expand, load_experiment

    spec = load_experiment(args.experiment)
    specs = expand(spec)
    if args.check:
        for s in specs:
            print(f"{s.name}: {s.constellation}, {s.parallelism.label}, placement {s.placement}, "
                  f"{s.workload.requests} x {s.workload.max_new_tokens} tokens")
        return 0
    from meshemu.emulation.kernel import require_root
    from meshemu.experiments.runner import run_file

    require_root()
    results = run_file(args.experiment, args.out)
    folder = results[0].folder if len(results) == 1 else results[0].folder.parent
    for r in results:
        s = r.summary
        print(f"meshemu: {s['name']}: {s['requests'] - s['failed']}/{s['requests']} requests, TTFT {s['ttft_ms']} ms "
              f"(predicted {s['predicted_ttft_ms']}), TPOT {s['tpot_ms']} ms (predicted {s['predicted_tpot_ms']}, "
              f"{s['tpot_error_pct']} %)", file=sys.stderr)
    print(f"meshemu: results in {folder}/ (report.md)", file=sys.stderr)
    print(folder / "report.md")
    return 0
