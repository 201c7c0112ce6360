"""Benchmark the NFQUEUE delay line: RTT error at 1/5/20 ms, across 6 hops, and under TCP load.

Run as root (it builds its own namespaces, prefix ``dltest-bench-<pid>-``, and deletes them):

    .venv/bin/python experiments/bench/delayline.py [--sections single,line,tcp] [--count 200]

RTT error = probe RTT - 2 x one-way path delay, from UDP echo probes timestamped
in userspace (``meshemu.emulation.delayline_testbed.probe_rtt``: a kernel receive
timestamp would be taken before the delay and hide it). ``baseline`` rows are
the same probe with no delay line at all: the probe's own cost (two process
wake-ups) that every row includes. The CPUs are kept from deep idle as in an
emulation (``MESHEMU_CPU_LATENCY=off`` measures without). ``late p99`` is the
daemon's own view: release time minus deadline. TCP: iperf3 (``-B`` node addresses, 1 stream,
first second omitted, TCP buffers up to 32 MiB in the namespaces), with the probe
running during the transfer: once unlimited (TCP then fills the CPU, and every
process's wake-ups, the probe's included, suffer) and once paced by iperf3 at
the target rate (2 Gbit/s on 1 hop, 1 Gbit/s on 6 hops). The probe runs under
SCHED_FIFO unless ``--probe-normal``: the machine is shared, and the
point is the delay line's error, not how long other load keeps the probe from
running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from meshemu.cpu_latency import CpuLatency
from meshemu.emulation.delayline import DelayLine
from meshemu.emulation.delayline_testbed import LineTestbed, probe_rtt
from meshemu.emulation.realtime import PROBE_PRIORITY


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def line_delays(n: int, link_s: float) -> np.ndarray:
    idx = np.arange(n)
    return np.abs(idx[:, None] - idx[None, :]) * link_s


def probe_row(label, tb, a, b, expected_rtt_s, args, dl=None, port=47999):
    if dl is not None:
        dl.reset_stats()
    r = probe_rtt(tb.namespaces[a], tb.addresses[a], tb.namespaces[b], tb.addresses[b], count=args.count,
                  interval_s=args.interval, port=port)
    s = r.summary(expected_rtt_s)
    row = {"case": label, "rtt_ms": expected_rtt_s * 1e3, **{k: s.get(k) for k in ("median_ms", "p99_ms", "max_ms")},
           "lost": s["lost"]}
    if dl is not None:
        st = dl.stats()
        row["late_p99_us"] = st["lateness_us"].get("p99")
        row["enobufs"] = st["enobufs"]
    return row


def iperf(tb, a, b, seconds, port=5299, rate=None):
    srv = subprocess.Popen(["ip", "netns", "exec", tb.namespaces[b], "iperf3", "-s", "-1", "-B", tb.addresses[b],
                            "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        r = subprocess.run(["ip", "netns", "exec", tb.namespaces[a], "iperf3", "-c", tb.addresses[b],
                            "-B", tb.addresses[a], "-p", str(port), "-t", str(seconds), "-O", "1", "-J"]
                           + (["-b", rate] if rate else []),
                           capture_output=True, text=True, timeout=seconds + 30, check=False)
        out = json.loads(r.stdout)
        end = out["end"]
        return {"gbps": end["sum_received"]["bits_per_second"] / 1e9, "retx": end["sum_sent"].get("retransmits")}
    finally:
        srv.kill()
        srv.wait()


def tcp_row(label, tb, a, b, expected_rtt_s, args, dl, rate=None):
    result = {}
    t = threading.Thread(target=lambda: result.update(iperf(tb, a, b, args.tcp_seconds, rate=rate)))
    dl.reset_stats()
    t.start()
    time.sleep(1.5)  # past slow start
    count = min(args.count, int((args.tcp_seconds - 2.0) / args.interval))
    r = probe_rtt(tb.namespaces[a], tb.addresses[a], tb.namespaces[b], tb.addresses[b], count=count,
                  interval_s=args.interval, port=47998)
    t.join()
    s = r.summary(expected_rtt_s)
    st = dl.stats()
    return {"case": label, "rtt_ms": expected_rtt_s * 1e3, **{k: s.get(k) for k in ("median_ms", "p99_ms", "max_ms")},
            "lost": s["lost"], "late_p99_us": st["lateness_us"].get("p99"), "enobufs": st["enobufs"],
            "gbps": result.get("gbps"), "retx": result.get("retx")}


def fmt(rows):
    cols = ["case", "rtt_ms", "median_ms", "p99_ms", "max_ms", "lost", "late_p99_us", "enobufs", "gbps", "retx"]
    heads = ["case", "RTT ms", "err med ms", "err p99 ms", "err max ms", "lost", "late p99 us", "ENOBUFS",
             "TCP Gbit/s", "retx"]
    cells = [[("" if r.get(c) is None else (f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])))
              for c in cols] for r in rows]
    widths = [max(len(h), *(len(row[k]) for row in cells)) for k, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="single,line,tcp")
    ap.add_argument("--count", type=int, default=200, help="probes per row")
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between probes")
    ap.add_argument("--calibration-us", type=float, default=None, help="default: DelayLine's default")
    ap.add_argument("--spin-us", type=float, default=None, help="default: DelayLine's default")
    ap.add_argument("--spin-share", type=float, default=None, help="default: DelayLine's default")
    ap.add_argument("--no-realtime", action="store_true", help="run the daemon without SCHED_FIFO")
    ap.add_argument("--probe-normal", action="store_true",
                    help=f"run the probe at normal priority (default: SCHED_FIFO {PROBE_PRIORITY}, below the "
                         "daemon's, so that other load on the machine does not delay the probe's own wake-ups)")
    ap.add_argument("--tcp-seconds", type=float, default=5.0)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench_delayline: run as root (it creates network namespaces)")
    if not args.probe_normal:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PROBE_PRIORITY))
    sections = set(args.sections.split(","))
    kw = {}
    if args.calibration_us is not None:
        kw["calibration_s"] = args.calibration_us * 1e-6
    if args.spin_us is not None:
        kw["spin_s"] = args.spin_us * 1e-6
    if args.spin_share is not None:
        kw["spin_share"] = args.spin_share
    if args.no_realtime:
        kw["realtime"] = False
    rows = []
    pfx = f"dltest-bench-{os.getpid()}-"
    t_start = time.time()
    with CpuLatency() as cpu, LineTestbed(7, pfx) as tb:
        # baselines: no delay line at all
        if sections & {"single", "tcp"}:
            rows.append(probe_row("baseline 1 hop, no delay line", tb, 0, 1, 0.0, args))
        if "line" in sections:
            rows.append(probe_row("baseline 6 hops, no delay line", tb, 0, 6, 0.0, args))
        if "tcp" in sections:
            rows.append({"case": "baseline TCP 1 hop, no delay line", **iperf(tb, 0, 1, args.tcp_seconds)})
        tb.install_rules()
        dl = DelayLine(tb.namespaces, tb.addresses, 0, **kw).start()
        try:
            time.sleep(0.5)  # past the start-up
            idle_cpu = cpu_seconds(dl.pid)
            time.sleep(1.0)
            idle_cpu = cpu_seconds(dl.pid) - idle_cpu
            busy_cpu = cpu_seconds(dl.pid)
            t_busy = time.monotonic()
            if "single" in sections:
                for d in (0.001, 0.005, 0.020):
                    dl.set_delays(line_delays(7, d))
                    rows.append(probe_row(f"1 hop, {d * 1e3:g} ms", tb, 0, 1, 2 * d, args, dl))
            if "line" in sections:
                dl.set_delays(line_delays(7, 0.005))
                rows.append(probe_row("6 hops x 5 ms", tb, 0, 6, 0.060, args, dl))
            if "tcp" in sections:
                dl.set_delays(line_delays(7, 0.005))
                rows.append(tcp_row("TCP 1 hop 5 ms, unlimited + probe", tb, 0, 1, 0.010, args, dl))
                rows.append(tcp_row("TCP 1 hop 5 ms, at 2 Gbit/s + probe", tb, 0, 1, 0.010, args, dl, rate="2G"))
                rows.append(tcp_row("TCP 6 hops x 5 ms, unlimited + probe", tb, 0, 6, 0.060, args, dl))
                rows.append(tcp_row("TCP 6 hops x 5 ms, at 1 Gbit/s + probe", tb, 0, 6, 0.060, args, dl,
                                    rate="1G"))
            st = dl.stats()
            busy_cpu = (cpu_seconds(dl.pid) - busy_cpu) / (time.monotonic() - t_busy)
        finally:
            dl.stop()
    print(fmt(rows))
    print(f"daemon: realtime={st['realtime']} packets={st['packets']} out_of_order={st['out_of_order']} "
          f"max_pending={st['max_pending']} enobufs={st['enobufs']} timestamp_fallback={st['timestamp_fallback']} "
          f"rt_demotions={st['rt_demotions']} spin_off_windows={st['spin_off_windows']}; CPU idle "
          f"{idle_cpu:.2f} s in 1 s, {100 * busy_cpu:.0f} % of a CPU over the runs; settings={kw or 'defaults'}; "
          f"probe={'normal' if args.probe_normal else 'SCHED_FIFO'}; {time.time() - t_start:.0f} s; "
          f"load avg {os.getloadavg()[0]:.2f}; cpu idle: {cpu.status}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "settings": kw, "daemon": st}, f, indent=1)


if __name__ == "__main__":
    main()
