"""The figures of a results folder, as PNG (matplotlib, no display needed)."""

from __future__ import annotations

import numpy as np

from meshemu.routing import shortest_route


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> None:
    """Lay ``fig`` out, write it to ``path`` (PNG, 110 dpi) and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def route_timeline(series, src: int, dst: int):
    """Per step: RTT (ms), hops and whether the path changed from the step before."""
    rtt, hops, changed, last = [], [], [], None
    for k in range(series.n_steps):
        r = shortest_route(series, k, src, dst)
        rtt.append(r.rtt_s * 1e3 if r.reachable else np.nan)
        hops.append(r.hops if r.reachable else np.nan)
        changed.append(last is not None and r.nodes != last)
        last = r.nodes
    return np.array(rtt), np.array(hops), np.array(changed)


def plot_rtt_and_hops(series, pairs, path, *, measured=None, timelines=None, title=""):
    """RTT and hop count over time for node-id pairs, route changes marked; measured probes as dots.

    ``measured`` maps a (src, dst) pair to (t_s array, rtt_ms array); ``timelines``
    maps a pair to its :func:`route_timeline`, when the caller has it already.
    """
    plt = _pyplot()
    fig, (ax_rtt, ax_hops) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(2, 1))
    t = series.times_s
    for i, (a, b) in enumerate(pairs):
        color = f"C{i}"
        label = f"{series.node_names[a]} - {series.node_names[b]}"
        rtt, hops, changed = (timelines or {}).get((a, b)) or route_timeline(series, a, b)
        ax_rtt.plot(t, rtt, color=color, label=f"{label} (link series)")
        ax_hops.step(t, hops, where="post", color=color)
        for tc in t[changed]:
            ax_rtt.axvline(tc, color=color, alpha=0.25, linestyle=":")
        if measured and (a, b) in measured:
            mt, mr = measured[(a, b)]
            ax_rtt.plot(mt, mr, "o", color=color, markersize=3, alpha=0.7, label=f"{label} (measured)")
    ax_rtt.set_ylabel("RTT (ms)")
    ax_hops.set_ylabel("hops")
    ax_hops.set_xlabel("time since epoch (s)")
    ax_rtt.legend(fontsize=8, loc="best")
    ax_rtt.set_title(title or f"{series.constellation}: RTT and hops (dotted: route changes)")
    save_figure(fig, path)
    return path
