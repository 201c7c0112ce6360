"""Figures and ``report.md`` for a results folder (and for a sweep's comparison)."""

from __future__ import annotations

import json

import numpy as np

from meshemu.emulation.probe import describe_path_share
from meshemu.experiments.plots import _pyplot, plot_rtt_and_hops, save_figure


def _fmt(v, digits=1):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def plot_token_latency(result, path):
    """Inter-token latency over time for each request, the prediction at each token's step beside it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, req in enumerate(result.requests):
        toks = [t for t in result.tokens if t.get("request") == req.get("request") and t["index"] > 0]
        if not toks:
            continue
        x = [t["clock_s"] - result.tokens[0]["clock_s"] for t in toks]
        ax.plot(x, [t["cycle_s"] * 1e3 for t in toks], ".", color=f"C{i % 10}", markersize=4,
                label=f"request {req.get('request')} measured" if i < 6 else None)
        pred = [t.get("predicted_cycle_s") for t in toks]
        if all(v is not None for v in pred):
            ax.plot(x, [v * 1e3 for v in pred], "-", color=f"C{i % 10}", alpha=0.6,
                    label=f"request {req.get('request')} predicted" if i < 6 else None)
    ax.set_xlabel("time since the first token (s)")
    ax.set_ylabel("time per output token (ms)")
    ax.set_title(f"{result.spec.name}: {result.spec.parallelism.label}, TPOT per token as the constellation moves")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def plot_predicted_vs_measured(labels, measured, predicted, path, title):
    """Grouped bars: TTFT and TPOT (ms), measured beside predicted, one group per label."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(labels))
    for ax, key, name in zip(axes, ("ttft_ms", "tpot_ms"), ("TTFT", "TPOT")):
        m = [v.get(key) or 0.0 for v in measured]
        p = [v.get(f"predicted_{key}") or 0.0 for v in predicted]
        ax.bar(x - 0.2, m, 0.4, label="measured")
        ax.bar(x + 0.2, p, 0.4, label="predicted")
        ax.set_xticks(x, labels, rotation=20, fontsize=8)
        ax.set_ylabel(f"{name} (ms)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_network_alone(labels, summaries, path, title):
    """TPOT (ms, log scale) per run: measured, predicted for this host, and predicted for the network alone."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(labels))
    for k, (key, name) in enumerate((("tpot_ms", "measured"), ("predicted_tpot_ms", "predicted (this host)"),
                                     ("predicted_tpot_network_ms", "predicted, network alone"))):
        values = [s.get(key) or np.nan for s in summaries]
        ax.bar(x + (k - 1) * 0.27, values, 0.27, label=name)
    ax.set_yscale("log")
    ax.set_xticks(x, labels, rotation=15, fontsize=8)
    ax.set_ylabel("time per output token (ms)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _measured_probes(result, series, node):
    out = {}
    for p in result.probes:
        if p.measured_rtt_ms is None:
            continue
        t, rtt = out.setdefault((node(p.src), node(p.dst)), ([], []))
        t.append(float(series.times_s[p.step]))
        rtt.append(p.measured_rtt_ms)
    return {k: (np.array(a), np.array(b)) for k, (a, b) in out.items()}


def _timelines(routes, node) -> dict:
    """routes.csv rows as per-pair (rtt_ms, hops, changed) arrays, so nothing is routed twice."""
    by_pair = {}
    for r in routes:
        by_pair.setdefault((node(r["src"]), node(r["dst"])), []).append(r)
    out = {}
    for pair, rows in by_pair.items():
        rtt = np.array([float(r["rtt_ms"]) if r["rtt_ms"] not in ("", None) else np.nan for r in rows])
        hops = np.array([float(r["hops"]) if r["hops"] not in ("", None) else np.nan for r in rows])
        paths = [r["path"] for r in rows]
        out[pair] = (rtt, hops, np.array([False] + [a != b for a, b in zip(paths, paths[1:])]))
    return out


def write_report(result, series, dep) -> None:
    """``report.md`` and its figures, from the run's own records (``dep``: its :class:`~meshemu.deployment.Deployment`)."""
    folder, spec, s, routes = result.folder, result.spec, result.summary, result.routes
    node, client = dep.node, dep.client_node
    pairs = [(node(client), node(dep.rank_nodes[0]))] + [(node(a), node(b)) for a, b in spec.probes]
    plot_rtt_and_hops(series, pairs, folder / "rtt_hops.png", measured=_measured_probes(result, series, node),
                      timelines=_timelines(routes, node),
                      title=f"{spec.name}: RTT and hops, client to rank 0 and probes (dotted: route changes)")
    plot_token_latency(result, folder / "tpot.png")
    ok = [r for r in result.requests if not r.get("error")]
    rows = [{"ttft_ms": (r.get("ttft_s") or 0) * 1e3, "tpot_ms": (r.get("tpot_s") or 0) * 1e3,
             "predicted_ttft_ms": (r.get("predicted_ttft_s") or 0) * 1e3,
             "predicted_tpot_ms": (r.get("predicted_tpot_s") or 0) * 1e3} for r in ok]
    plot_predicted_vs_measured([f"request {r.get('request')}" for r in ok], rows, rows,
                               folder / "predicted_vs_measured.png", f"{spec.name}: measured beside predicted")
    meta = json.loads((folder / "run.json").read_text())
    caps = meta.get("capabilities") or {}
    client_paths = [r["path"] for r in routes if r["src"] == client and r["dst"] == dep.rank_nodes[0]]
    route_changes = sum(a != b for a, b in zip(client_paths, client_paths[1:]))
    lines = [
        f"# {spec.name}", "", spec.description or "", "",
        "## Set-up", "",
        "| | |", "|---|---|",
        f"| constellation | {series.constellation}, {series.n_satellites} satellites, "
        f"{series.n_ground_stations} ground stations |",
        f"| window | {spec.window.start_s:g}-{spec.window.start_s + spec.window.duration_s:g} s at "
        f"{spec.window.step_s:g} s steps, played at {spec.time_scale:g}x |",
        f"| shaping | {meta['backend']} (kernel {caps.get('kernel', '?')}, netem "
        f"{'present' if caps.get('netem') else 'absent'}) |",
        f"| cpu idle | {meta.get('cpu_latency') or 'not recorded'} |",
        f"| model | {meta['model']}, compute {spec.model.compute} |",
        f"| parallelism | tp {spec.parallelism.tp} x pp {spec.parallelism.pp}, {spec.parallelism.allreduce} all-reduce |",
        f"| placement | {spec.placement}: " + ", ".join(f"rank {r} {n}" for r, n in enumerate(dep.rank_nodes)) + " |",
        f"| client | {client} |",
        f"| workload | {spec.workload.requests} requests of {spec.workload.max_new_tokens} tokens, "
        f"{spec.workload.concurrency} at a time |",
        "", "## Results", "",
        "| requests | failed | TTFT ms (predicted) | TPOT ms (predicted) | error | decode tok/s | end-to-end s |",
        "|---|---|---|---|---|---|---|",
        f"| {s['requests']} | {s['failed']} | {_fmt(s['ttft_ms'])} ({_fmt(s['predicted_ttft_ms'])}) | "
        f"{_fmt(s['tpot_ms'])} ({_fmt(s['predicted_tpot_ms'])}) | {_fmt(s['tpot_error_pct'])} % | "
        f"{_fmt(s['decode_tokens_per_s'])} | {_fmt(s['e2e_s'], 2)} |",
        "",
        f"TPOT predicted for the network alone (no per-message software cost, bytes at the link rate): "
        f"{_fmt(s.get('predicted_tpot_network_ms'))} ms. {_rates_line(meta)}"
        + (f" The floor beside it: one all-reduce message cost {_fmt(s['collective_ms_per_message'], 3)} ms here "
           f"(collective time per token over the messages on a rank's critical path), against "
           f"{_fmt(s.get('predictor_ms_per_message'), 3)} ms in the predictor (its idle calibration)."
           if s.get("collective_ms_per_message") else ""),
        "",
    ]
    if s.get("floor_ms_per_message") is not None:
        kinds = ", ".join(f"{k} {_fmt(v, 3)}" for k, v in (s.get("floor_by_kind_ms") or {}).items())
        lines += [f"The floor under this run's own load, as the shards measured it (each frame's time from its "
                  f"send to the thread that waited for it, less the routed path's delay): "
                  f"{_fmt(s['floor_ms_per_message'], 3)} ms per message "
                  f"({kinds}), against {_fmt(s.get('predictor_ms_per_message'), 3)} ms idle in the predictor. "
                  f"With the measured floor the prediction is TPOT {_fmt(s.get('predicted_tpot_loaded_ms'))} ms "
                  f"(error {_fmt(s.get('tpot_error_loaded_pct'))} %).", ""]
    failed = [r for r in result.requests if r.get("error")]
    if failed:
        lines += ["Failed requests: " + "; ".join(f"request {r.get('request')}: {r['error']}" for r in failed), ""]
    lines += _questions_and_answers(result.requests, client, dep.rank_nodes)
    if result.faults:
        plot_tokens_with_faults(result, folder / "faults.png")
        lines += _faults_section(result)
    probe = meta.get("probes") or {}
    player = meta.get("player") or {}
    lines += [
        f"The route from {client} to rank 0 changed {route_changes} times in the whole window. "
        f"While the workload ran, the player applied {player.get('steps', 0)} steps "
        f"(series time {_fmt(player.get('first_t_s'))}-{_fmt(player.get('last_t_s'))} s; apply p99 "
        f"{_fmt(player.get('apply_p99_ms'))} ms, lateness p99 {_fmt(player.get('late_p99_ms'))} ms) and "
        f"{player.get('link_changes', 0)} link states and {player.get('route_changes', 0)} routes changed. "
        f"Routes were computed {_passes(meta)}.",
        "",
        (f"RTT probed on the live mesh: error median {_fmt(probe.get('median_ms'), 3)} ms, "
         f"p99 {_fmt(probe.get('p99_ms'), 3)} ms over {probe.get('probes', 0)} probes ({probe.get('lost', 0)} lost)."
         if "median_ms" in probe else "No RTT probe came back during the run."),
        "",
        f"Paths checked hop by hop with TTL-limited probes: {describe_path_share(meta.get('paths') or {})}; "
        "per probe in `paths.csv`.",
        "", "## Figures", "",
        "![RTT and hops](rtt_hops.png)", "", "![TPOT per token](tpot.png)", "",
        "![Predicted vs measured](predicted_vs_measured.png)", "",
        "Files: `config.yaml`, `run.json`, `steps.csv`, `link_events.csv`, `routes.csv`, `probes.csv`, `paths.csv`, "
        "`requests.jsonl`, `summary.csv`, `series.npz` (the link series played).", "",
        f"See it move: `meshemu view {folder}` (the globe, routes and shards on http://127.0.0.1:8765/), or "
        f"`meshemu view {folder} --export {folder}/view.html` for one page that opens without a server.", "",
    ]
    (folder / "report.md").write_text("\n".join(lines))


def plot_tokens_with_faults(result, path):
    """Tokens of each request over the run's time, each fault's moment and outage marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    toks = result.tokens
    if not toks:
        plt.close(fig)
        return
    t0 = min(t["clock_s"] for t in toks)
    for i, req in enumerate(result.requests):
        mine = sorted((t for t in toks if t.get("request") == req.get("request")), key=lambda t: t["index"])
        ax.plot([t["clock_s"] - t0 for t in mine], [t["index"] for t in mine], ".", markersize=3, color=f"C{i % 10}",
                label=f"request {req.get('request')}" + (" (recovered)" if req.get("recovered") else ""))
    for f in result.faults:
        if f.get("fired_clock_s") is None:
            continue
        start = f["fired_clock_s"] - t0
        end = (f["ended_clock_s"] - t0) if f.get("ended_clock_s") is not None else None
        ax.axvline(start, color="red", linewidth=1)
        if end is not None:
            ax.axvspan(start, end, color="red", alpha=0.08)
        ax.text(start, ax.get_ylim()[1] * 0.95, f" {f['kind']} {f['node'] or f['target']}", color="red", fontsize=7,
                va="top")
    ax.set_xlabel("time since the run's first token (s)")
    ax.set_ylabel("token index")
    ax.set_title(f"{result.spec.name}: tokens as faults strike (red: fault, shaded: outage)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _faults_section(result) -> list[str]:
    lines = ["## Faults and recovery", "", "| fault | kind | target | struck | series time s | for s |",
             "|---|---|---|---|---|---|"]
    for f in result.faults:
        lines.append(f"| {f['fault']} | {f['kind']} | {f['target']} | {f['node'] or '-'} | {f['at_s']:g} | "
                     f"{_fmt(f['for_s'] if f['for_s'] is not None else f['reboot_s'])} |")
    lines += ["", "Each recovery, from the fault to the first token after it, measured (predicted), in ms:", "",
              "| request | fault | lost -> new | decision | detect | probe | place | load | re-prefill | total | error |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    ms = lambda v: "-" if v is None else f"{v * 1e3:.0f}"  # noqa: E731
    for r in result.recoveries:
        parts = " | ".join(f"{ms(r[p])} ({ms(r['predicted_' + p])})" for p in
                           ("detect_s", "probe_s", "place_s", "load_s", "reprefill_s"))
        err = "-" if r["recovery_error"] is None else f"{r['recovery_error'] * 100:+.1f} %"
        lines.append(f"| {r['request']} | {r['fault']} | {r['lost_nodes'] or '-'} -> {r['new_nodes']} | "
                     f"{r['decision']} | {parts} | {ms(r['recovery_s'])} ({ms(r['predicted_recovery_s'])}) | {err} |")
    same = [q for q in result.requests if q.get("faults")]
    checked = [q for q in result.requests if "same_tokens_as_fault_free" in q]
    proof = (f" Tokens identical to the whole model's, which no fault touched: "
             f"{sum(q['same_tokens_as_fault_free'] for q in checked)} of {len(checked)} requests."
             if checked else "")
    lines += ["", f"{sum(1 for q in same if q.get('recovered'))} of {len(same)} requests a fault struck recovered."
              + proof + " `faults.csv` lists what fired and when; `recoveries.csv` the parts.", "",
              "![tokens and faults](faults.png)", ""]
    return lines


def _questions_and_answers(requests, client, rank_nodes) -> list[str]:
    """Each request's prompt and the answer that came back from orbit (the first few, whole)."""
    if not requests:
        return []
    lines = ["## Questions and answers", "",
             f"Asked at {client}, answered by the model's shards on {', '.join(rank_nodes)}:", ""]
    for r in requests[:10]:
        answer = (r.get("answer") or "").strip() or "(no tokens)"
        lines += [f"**{r.get('request')}. {_one_line(r.get('prompt', ''))}**", "",
                  f"> {_one_line(answer)}" + (f" *(failed: {r['error']})*" if r.get("error") else ""), ""]
    if len(requests) > 10:
        lines += [f"... and {len(requests) - 10} more in `requests.jsonl`.", ""]
    return lines


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _rates_line(meta) -> str:
    rates = (meta.get("shaping") or {}).get("link_rates") or {}
    given = [f"{kind.upper()}s {r['max_bps'] / 1e9:,.0f} Gbit/s" if r["min_bps"] == r["max_bps"] else
             f"{kind.upper()}s {r['min_bps'] / 1e9:,.0f}-{r['max_bps'] / 1e9:,.0f} Gbit/s"
             for kind in ("isl", "gsl") if (r := rates.get(kind))]
    if not given:
        return "The constellation gives its links no rate."
    return (f"Link rates from the constellation: {', '.join(given)}; "
            + ("held by netem on every link end." if rates.get("paced") else
               f"not paced by the {meta.get('backend')} backend (delay only): serialisation at these rates is in the "
               "network-alone prediction."))


def _passes(meta) -> str:
    r = meta.get("routing") or {}
    if not r:
        return "(no record)"
    return (f"{r['passes']} times for {r['steps_computed']} of {r['steps']} steps "
            f"(at most {r['max_passes_per_step']} pass per step, shared by the player, placement, probes, "
            "predictor and this report)")


def plot_sweep_tpot(labels, results, path, title):
    """Time per output token over each run's time, one colour per sweep value (log scale: layouts differ 100x)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, (label, r) in enumerate(zip(labels, results)):
        toks = [t for t in r.tokens if t["index"] > 0]
        if toks:
            t0 = r.tokens[0]["clock_s"]
            ax.plot([t["clock_s"] - t0 for t in toks], [t["cycle_s"] * 1e3 for t in toks], ".", markersize=4,
                    color=f"C{i}", label=f"{label}: TPOT {_fmt(r.summary.get('tpot_ms'))} ms")
    ax.set_yscale("log")
    ax.set_xlabel("time since the run's first token (s)")
    ax.set_ylabel("time per output token (ms)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def write_sweep_report(spec, results, out) -> None:
    labels = [r.spec.name.removeprefix(spec.name + "-") for r in results]
    plot_predicted_vs_measured(labels, [r.summary for r in results], [r.summary for r in results],
                               out / "comparison.png", f"{spec.name}: sweep over {spec.sweep.what}")
    plot_sweep_tpot(labels, results, out / "tpot.png", f"{spec.name}: time per token as the constellation moves")
    alone = any(r.summary.get("predicted_tpot_network_ms") for r in results)
    if alone:
        plot_network_alone(labels, [r.summary for r in results], out / "network.png",
                           f"{spec.name}: TPOT measured, predicted, and for the network alone")
    lines = [f"# {spec.name}", "", spec.description or "", "",
             f"A sweep over `{spec.sweep.what}`: one experiment per value, each in its own folder.", "",
             "| value | parallelism | placement | TTFT ms (pred.) | TPOT ms (pred.) | error | floor ms/msg (pred. "
             "TPOT with it, error) | TPOT ms, network alone (pred.) | decode tok/s | failed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in zip(labels, results):
        s = r.summary
        lines.append(f"| [{label}]({r.folder.name}/report.md) | tp {s['tp']} x pp {s['pp']} {s['allreduce']} | "
                     f"{s['placement']} | {_fmt(s['ttft_ms'])} ({_fmt(s['predicted_ttft_ms'])}) | "
                     f"{_fmt(s['tpot_ms'])} ({_fmt(s['predicted_tpot_ms'])}) | {_fmt(s['tpot_error_pct'])} % | "
                     f"{_fmt(s.get('floor_ms_per_message'), 3)} ({_fmt(s.get('predicted_tpot_loaded_ms'))}, "
                     f"{_fmt(s.get('tpot_error_loaded_pct'))} %) | "
                     f"{_fmt(s.get('predicted_tpot_network_ms'))} | "
                     f"{_fmt(s['decode_tokens_per_s'])} | {s['failed']} |")
    lines += ["", "Floor: what one message between shards cost this host in the run, under its own load (each "
              "frame's time from its send to the thread that waited for it, less the routed path's delay, as the "
              "shards measured it); beside it "
              "the prediction redone with that cost instead of the idle calibration.",
              "", "TPOT, network alone: the same prediction with no per-message software cost and bytes at the "
              "link rate: what the constellation's links would cost the layout without this host's floor.", "",
              "![comparison](comparison.png)", "", "![TPOT over time](tpot.png)", ""]
    if alone:
        lines += ["![TPOT: measured, predicted, network alone](network.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
