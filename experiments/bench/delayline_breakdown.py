"""Break the RTT probes' error down into the delay line's part and the rest, per path length.

Trace a run's delay line, keep its probes, then join the two (as root for the run, anyone for this):

    sudo MESHEMU_DELAYLINE_TRACE=/tmp/dl.npz .venv/bin/meshemu probe --constellation demo --duration 30 \\
         --prefix dlx --format csv --out /tmp/probes.csv
    .venv/bin/python experiments/bench/delayline_breakdown.py /tmp/dl.npz /tmp/probes.csv

(``meshemu run`` writes ``probes.csv`` into its results folder; the same variable traces it.)

Or let this script play the demo shell and probe it itself (root), with the same ICMP echoes
(:func:`meshemu.emulation.echo.exchange`), so that "rest" splits into its send and receive sides:

    sudo .venv/bin/python experiments/bench/delayline_breakdown.py run --duration 30 [--probe-fifo]

An RTT probe is an ICMP echo with sequence number 0 (path checks use the TTL as their sequence), so
its request's record at the destination and its reply's record at the source are found by ICMP
identifier, and the probes of one pair are matched to the CSV's rows of that pair in time order.
Per probe, with D the path delay the series expects each way:

    error = measured - expected RTT
          = (request lateness + reply lateness)            the daemon released late (its own stamps)
          + (delay held - D, both ways)                    a delay other than the step's (a step applied
                                                           while the probe was out), minus the calibration
          + turnaround                                     request released -> reply's kernel arrival at the
                                                           source (echo reply made, sent back over the hops)
          + rest                                           probe send -> request's arrival at the destination,
                                                           and reply released -> the probe read it (wake-up)

"rest" is what the trace cannot see; everything else is measured per packet.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

ICMP, ECHO_REPLY, ECHO_REQUEST = 1, 0, 8
BUCKETS_MS = ((0, 50), (50, 100), (100, 1000))  # expected RTT: short, middle, long paths


def load_trace(path):
    z = np.load(path)
    names = [str(ns).split(".", 1)[1] if "." in str(ns) else str(ns) for ns in z["namespaces"]]
    return z["trace"], names, int(z["calibration_ns"]), [str(a) for a in z["addresses"]]


def attach_stamps(probes, stamps, names, addresses):
    """Give each answered probe row the ICMP identifier and the probe's own send/receive stamps (in order per pair).

    ``stamps``: rows of netns, dst, ident, seq, sent_ns, received_ns, one per echo the probe sent.
    """
    by_ns = {f"{n}": i for i, n in enumerate(names)}
    by_addr = {a: i for i, a in enumerate(addresses)}
    queues = {}
    for s in stamps:
        if int(s["seq"]) != 0 or s["received_ns"] in ("", "None"):
            continue
        a = by_ns[s["netns"].split(".", 1)[1]]
        queues.setdefault((names[a], names[by_addr[s["dst"]]]), []).append(s)
    for p in probes:
        if p["measured_rtt_ms"] in ("", None):
            continue
        q = queues.get((p["src"], p["dst"]))
        if q:
            s = q.pop(0)
            p.update(ident=int(s["ident"]), sent_ns=int(s["sent_ns"]), received_ns=int(s["received_ns"]))


def rtt_probe_records(trace, seq=0):
    """ICMP echo requests and replies with sequence ``seq``, keyed by (kind, queue node, source node, identifier)."""
    t = trace[(trace["protocol"] == ICMP) & (trace["l4_4"] >= 0) & ((trace["l4_4"] & 0xFFFF) == seq)]
    kind = t["l4_0"] >> 24
    out = {}
    for rec, k in zip(t, kind):
        if k in (ECHO_REQUEST, ECHO_REPLY):
            out.setdefault((int(k), int(rec["dst"]), int(rec["src"]), int(rec["l4_4"]) >> 16), []).append(rec)
    return out


def join(trace, names, probes, seq=0):
    """Per probe of ``probes`` (CSV rows): (src, dst, expected ms, measured ms, request record, reply record,
    the probe's send and receive stamps or None)."""
    node = {n: i for i, n in enumerate(names)}
    recs = rtt_probe_records(trace, seq)
    rows = []
    by_pair = {}
    for p in probes:
        by_pair.setdefault((p["src"], p["dst"]), []).append(p)
    for (a_name, b_name), plist in by_pair.items():
        a, b = node[a_name], node[b_name]
        exchanges = []
        for (kind, q, s, ident), rl in recs.items():
            if kind == ECHO_REQUEST and q == b and s == a:
                replies = recs.get((ECHO_REPLY, a, b, ident), [])
                req = min(rl, key=lambda r: r["arrival_ns"])  # a retransmission would be a second record
                if replies:
                    exchanges.append((req, min(replies, key=lambda r: r["arrival_ns"])))
        exchanges.sort(key=lambda e: e[0]["arrival_ns"])
        answered = [p for p in plist if p["measured_rtt_ms"] not in ("", None)]
        if answered and all("ident" in p for p in answered):  # match by identifier
            by_ident = {int(e[0]["l4_4"]) >> 16: e for e in exchanges}
            answered = [p for p in answered if p["ident"] in by_ident]
            exchanges = [by_ident[p["ident"]] for p in answered]
        if len(exchanges) != len(answered):
            print(f"{a_name}-{b_name}: {len(answered)} answered probes but {len(exchanges)} traced exchanges: "
                  "matching the last ones (the trace ring may have wrapped)", file=sys.stderr)
            m = min(len(exchanges), len(answered))
            exchanges, answered = exchanges[len(exchanges) - m:], answered[len(answered) - m:]
        for p, (req, rep) in zip(answered, exchanges):
            rows.append((a_name, b_name, float(p["expected_rtt_ms"]), float(p["measured_rtt_ms"]), req, rep,
                         p.get("sent_ns"), p.get("received_ns")))
    return rows


def parts(rows, calibration_ns):
    """The columns of the breakdown, in ms, one entry per probe."""
    cols = {k: [] for k in ("expected", "error", "late_req", "late_rep", "held_minus_expected", "turnaround",
                            "rest", "read_lag_req", "read_lag_rep", "send_rep")}
    cols.update(send_side=[], receive_side=[])
    for _, _, expected_ms, measured_ms, req, rep, sent_ns, received_ns in rows:
        late = [(r["release_ns"] - r["deadline_ns"]) / 1e6 for r in (req, rep)]
        held = (req["deadline_ns"] - req["arrival_ns"] + rep["deadline_ns"] - rep["arrival_ns"]) / 1e6
        turnaround = (rep["arrival_ns"] - req["release_ns"]) / 1e6
        error = measured_ms - expected_ms
        cols["expected"].append(expected_ms)
        cols["error"].append(error)
        cols["late_req"].append(late[0])
        cols["late_rep"].append(late[1])
        cols["held_minus_expected"].append(held - expected_ms)  # the calibration (2 x) shows here as negative
        cols["turnaround"].append(turnaround)
        cols["rest"].append(error - late[0] - late[1] - (held - expected_ms) - turnaround)
        cols["read_lag_req"].append((req["read_ns"] - req["arrival_ns"]) / 1e6)
        cols["read_lag_rep"].append((rep["read_ns"] - rep["arrival_ns"]) / 1e6)
        cols["send_rep"].append((rep["sent_ns"] - rep["release_ns"]) / 1e6)
        if sent_ns is not None:  # probed here: rest = send side + receive side
            cols["send_side"].append((req["arrival_ns"] - sent_ns) / 1e6)
            cols["receive_side"].append((received_ns - rep["release_ns"]) / 1e6)
    return {k: np.array(v) for k, v in cols.items() if len(v) == len(rows)}


def table(c, pairs):
    """Rows per path length (expected RTT) and per pair."""
    groups = [("all", np.ones(len(c["error"]), dtype=bool))]
    groups += [(f"{lo}-{hi} ms", (c["expected"] >= lo) & (c["expected"] < hi)) for lo, hi in BUCKETS_MS]
    for pair in sorted(set(pairs), key=lambda p: np.mean(c["expected"][np.array(pairs) == p])):
        m = np.array(pairs) == pair
        groups.append((f"{pair} ({np.mean(c['expected'][m]):.0f} ms)", m))
    return _rows(c, groups)


def _rows(c, groups):
    heads = ("paths (expected RTT)", "probes", "error p50/p99", "late req+rep p50/p99", "held-exp p50/p99",
             "turnaround p50/p99", "rest p50/p99", "late>0.3 ms", "rest>0.5 ms")
    if "send_side" in c:
        heads += ("rest: send side p50/p99", "rest: receive side p50/p99")
    lines = [" | ".join(heads), " | ".join("---" for _ in heads)]
    for label, m in groups:
        if not m.any():
            continue
        late = c["late_req"][m] + c["late_rep"][m]

        def pq(x):
            return f"{np.median(x):.3f} / {np.percentile(x, 99):.3f}"

        lines.append(" | ".join([label, str(int(m.sum())), pq(c["error"][m]), pq(late),
                                 pq(c["held_minus_expected"][m]), pq(c["turnaround"][m]), pq(c["rest"][m]),
                                 str(int((np.maximum(c["late_req"][m], c["late_rep"][m]) > 0.3).sum())),
                                 str(int((c["rest"][m] > 0.5).sum()))]
                                + ([pq(c["send_side"][m]), pq(c["receive_side"][m])] if "send_side" in c else [])))
    return "\n".join(lines)


def probe_run(args):
    """Play the demo shell with a traced delay line and probe it here; returns (trace path, probe rows)."""
    from meshemu.cli.scenario import add_scenario_args, load_scenario
    from meshemu.cli.topology import compute_series
    from meshemu.emulation.delayline import TRACE_ENV
    from meshemu.emulation.echo import Request, exchange, next_ident
    from meshemu.emulation.emulation import Emulation
    from meshemu.emulation.player import Player
    from meshemu.emulation.probe import default_pairs

    sp = argparse.ArgumentParser()
    add_scenario_args(sp, duration_s=args.duration)
    scenario = load_scenario(sp.parse_args(["--duration", str(args.duration)]))
    series = compute_series(scenario)
    trace_path = os.path.join(tempfile.mkdtemp(prefix="dl-breakdown-"), "trace.npz")
    os.environ[TRACE_ENV] = trace_path
    if args.probe_fifo:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
    rows = []
    with Emulation(series, shaper="delayline", prefix=f"dlbd{os.getpid() % 100000}") as emu:
        pairs = default_pairs(emu)
        plan = emu.plan

        def at_step(rec):
            for _ in range(args.repeat):
                reqs = [Request(plan.namespaces[a], plan.addresses[a], plan.addresses[b], next_ident(), 0,
                                timeout_s=1.0) for a, b in pairs]
                for (a, b), r in zip(pairs, exchange(reqs)):
                    rows.append({"src": plan.node_names[a], "dst": plan.node_names[b],
                                 "expected_rtt_ms": emu.expected_rtt_s(a, b, rec.step) * 1e3,
                                 "measured_rtt_ms": "" if r.rtt_s is None else r.rtt_s * 1e3,
                                 "sent_ns": r.sent_ns, "received_ns": r.received_ns})

        Player(emu).play(0, series.n_steps, on_step=at_step)
    del os.environ[TRACE_ENV]
    return trace_path, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", help="the .npz a traced delay line saved (MESHEMU_DELAYLINE_TRACE), or 'run'")
    ap.add_argument("probes", nargs="?", help="the run's probes CSV (meshemu probe --out, or a results folder's "
                                              "probes.csv)")
    ap.add_argument("--worst", type=int, default=10, help="list this many worst probes with their parts")
    ap.add_argument("--csv", help="write the per-probe parts here")
    ap.add_argument("--echo-seq", type=int, default=0,
                    help="ICMP sequence number of the RTT probes (0; 'ping -c 1', the probe before, sends 1)")
    ap.add_argument("--stamps", help="the probe's own stamps (CSV: netns, dst, ident, seq, sent_ns, received_ns)")
    ap.add_argument("--duration", type=float, default=30.0, help="run: seconds of the demo shell (30)")
    ap.add_argument("--repeat", type=int, default=1, help="run: probe rounds per step (1)")
    ap.add_argument("--probe-fifo", action="store_true", help="run: probe under SCHED_FIFO (priority 5)")
    args = ap.parse_args(argv)
    if args.trace == "run":
        trace_file, probes = probe_run(args)
    elif args.probes is None:
        sys.exit("give the trace and the probes CSV, or 'run'")
    else:
        trace_file = args.trace
        with open(args.probes, newline="") as f:
            probes = list(csv.DictReader(f))
    trace, names, calibration_ns, addresses = load_trace(trace_file)
    if args.stamps:
        with open(args.stamps, newline="") as f:
            attach_stamps(probes, list(csv.DictReader(f)), names, addresses)
    rows = join(trace, names, probes, args.echo_seq)
    if not rows:
        sys.exit("no probe of the CSV was found in the trace")
    c = parts(rows, calibration_ns)
    print(f"{len(rows)} probes joined; {len(trace)} trace records; calibration {calibration_ns / 1e3:.0f} us "
          "per release; all figures ms")
    print(table(c, [f"{r[0]}-{r[1]}" for r in rows]))
    order = np.argsort(-c["error"])[:args.worst]
    print("\nworst probes: pair, expected, error = late req + late rep + held-expected + turnaround + rest;"
          " read lag req/rep; reply verdict send")
    for i in order:
        a, b = rows[i][:2]
        print(f"  {a}-{b} {c['expected'][i]:7.2f}: {c['error'][i]:+.3f} = {c['late_req'][i]:+.3f} "
              f"{c['late_rep'][i]:+.3f} {c['held_minus_expected'][i]:+.3f} {c['turnaround'][i]:+.3f} "
              f"{c['rest'][i]:+.3f}; lag {c['read_lag_req'][i]:.3f}/{c['read_lag_rep'][i]:.3f}; "
              f"send {c['send_rep'][i]:.3f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["src", "dst", *c])
            for i, r in enumerate(rows):
                w.writerow([r[0], r[1], *(round(float(c[k][i]), 4) for k in c)])


if __name__ == "__main__":
    main()
