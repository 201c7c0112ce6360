"""What a shaping backend really applies, measured on a live demo mesh (root): delay, rate, loss.

    sudo python experiments/bench/shaping.py --shaper netem      # e.g. inside tools/vm.sh shell
    sudo python experiments/bench/shaping.py --shaper delayline  # delay only

Prints, for one city pair: the RTT floor (every link 1 us long, same backend), the RTT error
against the link series after that floor, TCP goodput under ``--rate-mbps`` beside the rate's
payload share, and the echo loss under ``--loss`` beside the binomial expectation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import numpy as np

from meshemu.constellation import TimeGrid, default_ground_stations, load_constellation
from meshemu.emulation.emulation import Emulation
from meshemu.emulation.probe import echo_rtt_s
from meshemu.emulation.shaping import ShapingConfig
from meshemu.links import compute_link_series


def rtts_ms(emu, a: int, b: int, n: int) -> np.ndarray:
    plan = emu.plan
    out = [echo_rtt_s(plan.namespaces[a], plan.addresses[a], plan.addresses[b], 2.0) for _ in range(n)]
    return np.array([r * 1e3 for r in out if r is not None])


def hops(emu, a: int, b: int) -> int:
    from meshemu.routing import shortest_route

    return len(shortest_route(emu.series, emu.step, a, b).nodes) - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shaper", default="auto")
    ap.add_argument("--pair", nargs=2, default=("Paris", "Moscow"))
    ap.add_argument("--rate-mbps", type=float, default=20.0)
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument("--probes", type=int, default=50)
    args = ap.parse_args()
    c = load_constellation("demo")
    series = compute_link_series(c, default_ground_stations(), TimeGrid.from_window(c.epoch_utc, start_s=0, duration_s=2, step_s=1))
    a, b = series.node_index(args.pair[0]), series.node_index(args.pair[1])
    short = series.length_m.copy()
    short[~np.isnan(short)] = 300.0
    quiet = lambda _: None  # noqa: E731
    out = {"shaper": args.shaper, "pair": list(args.pair)}
    with Emulation(dataclasses.replace(series, length_m=short), shaper=args.shaper, log=quiet) as emu:
        out["backend"] = emu.backend
        out["floor_ms"] = float(np.median(rtts_ms(emu, a, b, args.probes)))
    with Emulation(series, shaper=args.shaper, log=quiet) as emu:
        expected = emu.expected_rtt_s(a, b) * 1e3
        err = rtts_ms(emu, a, b, args.probes) - expected - out["floor_ms"]
        out.update(expected_rtt_ms=expected, hops=hops(emu, a, b), error_median_ms=float(np.median(err)),
                   error_p99_ms=float(np.percentile(err, 99)), probes=len(err))
    if out["backend"] == "netem":
        rate = ShapingConfig(rate_bps=args.rate_mbps * 1e6)
        with Emulation(series, shaper="netem", shaping=rate, log=quiet) as emu:
            hb, ha = emu.host(args.pair[1]), emu.host(args.pair[0])
            server = hb.popen(f"iperf3 -s -B {hb.IP()}")
            try:
                for _ in range(50):
                    rep = json.loads(ha.popen(f"iperf3 -c {hb.IP()} -B {ha.IP()} -J -t 5 -O 1").communicate()[0])
                    if "unable to connect" not in rep.get("error", ""):
                        break
            finally:
                server.kill()
            got = rep["end"]["sum_received"]["bits_per_second"]
            out.update(rate_mbps=args.rate_mbps, tcp_goodput_mbps=got / 1e6,
                       goodput_vs_payload_share=got / (args.rate_mbps * 1e6 * 1448 / 1514))
        with Emulation(series, shaper="netem", shaping=ShapingConfig(loss=args.loss), log=quiet) as emu:
            ha, hb = emu.host(args.pair[0]), emu.host(args.pair[1])
            sent = 2000
            text = ha.popen(f"ping -n -q -c {sent} -i 0.001 -W 2 -I {ha.IP()} {hb.IP()}").communicate()[0].decode()
            received = int(re.search(r"(\d+) received", text).group(1))
            expected_loss = 1 - (1 - args.loss) ** (2 * out["hops"])
            out.update(loss_per_link=args.loss, echo_loss=1 - received / sent, expected_echo_loss=expected_loss,
                       binomial_sd=float(np.sqrt(expected_loss * (1 - expected_loss) / sent)))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
