#!/usr/bin/env python3
"""Writes BENCHMARKS.md from the JSON lines of bench/run: one row per figure with its target,
the median (min–max) of the runs, whether the target is met, and the dialogue-ts on Node
reference; then the machine, the commit and the settings."""

import argparse
import json
import os
import platform
import statistics
import subprocess

DEFAULTS = {
    "RUNS": "3", "SOAK_RUNS": "3", "FANOUT_MESSAGES": "30000", "LATENCY_RATES": "500 5000",
    "LATENCY_SECONDS": "10", "IDLE_CONNECTIONS": "10000", "IDLE_CONCURRENCY": "64",
    "MESSAGES": "100000", "DEEP_ROWS": "1000000", "HISTORY_SAMPLES": "500",
    "SCAN_PRELOAD": "5000", "RESTART_MESSAGES": "150", "SOAK_CONNECTIONS": "10000",
    "SOAK_ROOMS": "100", "SOAK_RATES": "500 1000", "SOAK_SECONDS": "300",
    "IDLE_MAX_CONNECTIONS": "19000",
    "WEB_CONNECTIONS": "1000", "WEB_REQUESTS": "500", "JITTER_RECEIVERS": "1000", "JITTER_RATE": "100", "JITTER_SECONDS": "60",
    "STORM_RECEIVERS": "10000", "CLUSTER_ROOMS": "1000", "CLUSTER_MEMBERS": "10",
    "CLUSTER_MESSAGES": "20000", "CLUSTER_RATE": "1000", "CROWD_NODES": "6",
    "CROWD_CONNECTIONS": "17000",
}


def page_p99(depth):
    """The worse p99 of the offsets and cursor forms at `depth` (None: not measured)."""
    def get(r):
        ps = [x["p99_ms"] for x in r.get("results", []) if x["depth"] == depth]
        return max(ps) if ps else None
    return get


def worst_page_p99(r):
    return max((x["p99_ms"] for x in r.get("results", [])), default=None)


def field(name):
    return lambda r: r.get(name)


def scan_ok(r):
    s = r.get("scan")
    return None if s is None else (1 if s["ok"] else 0)


def figures(settings):
    """(figure, bench, value, unit, target as (op, number, text), Node reference, judged on);
    judged on "median", or "all" for correctness figures every run must meet."""
    f = [
        ("Server CPU per delivery at saturation, 100 subscribers × 4 senders", "fanout",
         field("server_cpu_us_per_delivery"), "µs", ("<=", 0.75, "≤ 0.75 µs"), "7.4 µs", "median"),
        ("Deliveries/s at saturation (same runs)", "fanout",
         field("deliveries_per_s"), "/s", None, "133,600/s", "median"),
        ("Load generator CPU during those runs (one core; near 100 % = it sets the pace)",
         "fanout", field("loadgen_cpu_pct"), "%", None, "—", "median"),
    ]
    p99_targets = {500: ("<=", 1, "≤ 1 ms"), 5000: ("<=", 5, "≤ 5 ms")}
    node = {500: ("0.58 ms", "3.8 ms")}
    for rate in (int(r) for r in settings["LATENCY_RATES"].split()):
        at = f"at {rate:,} msg/s × 100 subscribers"
        f += [
            (f"Latency p50 {at}, `accepted`", f"latency-{rate}-accepted", field("p50_ms"), "ms",
             None, node.get(rate, ("—", "—"))[0], "median"),
            (f"Latency p99 {at}, `accepted`", f"latency-{rate}-accepted", field("p99_ms"), "ms",
             p99_targets.get(rate), node.get(rate, ("—", "—"))[1], "median"),
            (f"Latency p99 {at}, `stored` ÷ `accepted` (same run)", f"latency-{rate}-ratio",
             field("p99_ratio"), "", ("<=", 2, "≤ 2") if rate == 500 else None, "—", "median"),
            (f"Floor: latency p50 {at}", f"latency-{rate}-floor", field("p50_ms"), "ms", None,
             "—", "median"),
            (f"Floor: latency p99 {at}", f"latency-{rate}-floor", field("p99_ms"), "ms", None,
             "—", "median"),
            (f"Floor: server CPU per delivery {at}", f"latency-{rate}-floor",
             field("server_cpu_us_per_delivery"), "µs", None, "—", "median"),
            (f"Server CPU per delivery {at}, `accepted`", f"latency-{rate}-accepted",
             field("server_cpu_us_per_delivery"), "µs", None, "—", "median"),
            (f"Latency p99 {at}, `accepted` ÷ floor (same run)", f"latency-{rate}-accepted-vs-floor",
             field("p99"), "×", ("<=", 1.25, "≤ 1.25") if rate == 500 else None, "—", "median"),
            (f"Server CPU per delivery {at}, `accepted` ÷ floor (same run)",
             f"latency-{rate}-accepted-vs-floor", field("cpu"), "×",
             ("<=", 1.25, "≤ 1.25") if rate == 500 else None, "—", "median"),
            (f"Latency p99 {at}, `stored` ÷ floor (same run)", f"latency-{rate}-vs-floor",
             field("p99"), "×", None, "—", "median"),
            (f"Server CPU per delivery {at}, `stored` ÷ floor (same run)",
             f"latency-{rate}-vs-floor", field("cpu"), "×", None, "—", "median"),
        ]
        at += ", `stored`"
        f += [
            (f"Latency p50 {at}", f"latency-{rate}", field("p50_ms"), "ms", None,
             node.get(rate, ("—", "—"))[0], "median"),
            (f"Latency p99 {at}", f"latency-{rate}", field("p99_ms"), "ms",
             p99_targets.get(rate), node.get(rate, ("—", "—"))[1], "median"),
            (f"Triggers refused by the server {at} (of {rate * float(settings['LATENCY_SECONDS']):,.0f})",
             f"latency-{rate}", field("refused"), "", None, "—", "median"),
            (f"Deliveries lost {at} (of accepted triggers)", f"latency-{rate}", field("lost"), "",
             ("==", 0, "0"), "—", "all"),
        ]
    f += [
        ("Server memory per idle joined connection", "idle",
         field("kib_per_connection"), "KiB", ("<=", 8, "≤ 8 KB"), "28.6 KB", "median"),
        ("Floor: server memory per idle joined connection", "idle-floor",
         field("kib_per_connection"), "KiB", None, "—", "median"),
        ("Server memory per idle joined connection ÷ floor (same run)", "idle-vs-floor",
         field("mem"), "×", None, "—", "median"),
        ("Connections opened (connect + join) per second", "idle",
         field("connections_per_s"), "/s", (">=", 10000, "≥ 10,000/s"), "1,500/s", "median"),
        ("Floor: connections opened (connect + join) per second", "idle-floor",
         field("connections_per_s"), "/s", None, "—", "median"),
        ("Connections opened per second ÷ floor (same run)", "idle-vs-floor",
         field("conn"), "×", None, "—", "median"),
        ("Server CPU per connection opened (connect + join)", "idle",
         field("server_cpu_us_per_connection"), "µs", None, "—", "median"),
        ("Floor: server CPU per connection opened (connect + join)", "idle-floor",
         field("server_cpu_us_per_connection"), "µs", None, "—", "median"),
        ("Server CPU per connection opened ÷ floor (same run)", "idle-vs-floor",
         field("conn_cpu"), "×", None, "—", "median"),
        ("Server CPU per connection closed (its recoverable session kept)", "idle",
         field("close_cpu_us_per_connection"), "µs", None, "—", "median"),
        ("Floor: server CPU per connection closed", "idle-floor",
         field("close_cpu_us_per_connection"), "µs", None, "—", "median"),
        (f"Idle joined connections held at once ({int(settings['IDLE_MAX_CONNECTIONS']):,} "
         "asked, 8 source addresses; bounded by the open files limit)", "idle-max",
         field("opened"), "", None, "—", "median"),
        (f"Server memory per idle joined connection at {int(settings['IDLE_MAX_CONNECTIONS']):,}",
         "idle-max", field("kib_per_connection"), "KiB", ("<=", 8, "≤ 8 KB"), "—", "median"),
        (f"Connections opened per second at {int(settings['IDLE_MAX_CONNECTIONS']):,}",
         "idle-max", field("connections_per_s"), "/s", None, "—", "median"),
        ("Chat page first load (page + assets), gzipped as sent", "web",
         field("first_load_gzip_kib"), "KiB", ("<=", 100, "≤ 100 KB"), "—", "median"),
        ("`GET /` p99", "web", field("page_p99_ms"), "ms", None, "—", "median"),
        ("`GET /api/stats` p99 (the dashboard's data), 100 rooms, 1,000 connections", "web",
         field("stats_p99_ms"), "ms", ("<=", 10, "≤ 10 ms"), "—", "median"),
        ("Messages/s triggered through to the database, SQLite, `stored`", "persist-sqlite",
         field("persisted_per_s"), "/s", (">=", 60000, "≥ 60,000/s"), "18,600/s", "median"),
        ("Messages/s triggered through to the database, SQLite, `accepted`",
         "persist-sqlite-accepted", field("persisted_per_s"), "/s", (">=", 100000, "≥ 100,000/s"),
         "18,600/s", "median"),
        ("Messages/s triggered through to the database, PostgreSQL, `stored`", "persist-postgres",
         field("persisted_per_s"), "/s", None, "—", "median"),
        ("Messages/s triggered through to the database, PostgreSQL, `accepted`",
         "persist-postgres-accepted", field("persisted_per_s"), "/s", (">=", 50000, "≥ 50,000/s"),
         "—", "median"),
    ]
    deepest = int(settings["DEEP_ROWS"]) - 20
    for backend, name in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        for depth, ref in ((100, "20 ms"), (10000, "64 ms"), (90000, "74 ms"), (deepest, "—")):
            f.append((f"20-event page p99 at depth {depth:,}, {name}", f"history-{backend}",
                      page_p99(depth), "ms", ("<=", 2, "≤ 2 ms"), ref, "median"))
        f.append((f"20-event page p99, worst depth and form, {name}", f"history-{backend}",
                  worst_page_p99, "ms", ("<=", 2, "≤ 2 ms"), "74 ms (depth 90,000)", "median"))
        f.append((f"Cursor scan of {int(settings['SCAN_PRELOAD']):,} events triggered through "
                  f"the server: every seq once, newest first, no gap (1 = yes), {name}",
                  f"scan-{backend}", scan_ok, "", ("==", 1, "1"), "—", "all"))
    for rate in (int(r) for r in settings["SOAK_RATES"].split()):
        soak = (f"Soak ({int(settings['SOAK_CONNECTIONS']):,} connections, "
                f"{int(settings['SOAK_ROOMS']):,} rooms, {rate:,} msg/s, "
                f"{int(settings['SOAK_SECONDS']):,} s)")
        b = f"soak-{rate}"
        f += [
            (f"{soak}: deliveries lost", b, field("lost"), "", ("==", 0, "0"), "—", "all"),
            (f"{soak}: triggers refused", b, field("refused"), "", None, "—", "median"),
            (f"{soak}: latency p50", b, field("p50_ms"), "ms", None, "—", "median"),
            (f"{soak}: latency p99", b, field("p99_ms"), "ms", None, "—", "median"),
            (f"{soak}: floor latency p50", b + "-floor", field("p50_ms"), "ms", None, "—",
             "median"),
            (f"{soak}: floor latency p99", b + "-floor", field("p99_ms"), "ms", None, "—",
             "median"),
            (f"{soak}: latency p50 ÷ floor (same run)", b + "-vs-floor", field("p50"), "×",
             ("<=", 2, "≤ 2"), "—", "median"),
            (f"{soak}: latency p99 ÷ floor (same run)", b + "-vs-floor", field("p99"), "×",
             ("<=", 1, "≤ 1"), "—", "median"),
            (f"{soak}: server CPU per delivery ÷ floor (same run)", b + "-vs-floor",
             field("cpu"), "×", None, "—", "median"),
            (f"{soak}: deliveries slower than 5 ms", b, field("slow_pct"), "%", None, "—",
             "median"),
            (f"{soak}: floor deliveries slower than 5 ms", b + "-floor", field("slow_pct"),
             "%", None, "—", "median"),
            (f"{soak}: 100 ms slots (by send time) with a delivery slower than 5 ms", b,
             field("slow_slots"), "", None, "—", "median"),
            (f"{soak}: floor 100 ms slots with a delivery slower than 5 ms", b + "-floor",
             field("slow_slots"), "", None, "—", "median"),
            (f"{soak}: server RSS growth, first to last sample (flat = within 10 %)", b,
             field("rss_growth_pct"), "%", ("<=", 10, "flat (≤ 10 %)"), "—", "median"),
            (f"{soak}: server RSS, last sample", b, field("rss_last_kib"), "KiB", None, "—",
             "median"),
            (f"{soak}: floor RSS growth, first to last sample", b + "-floor",
             field("rss_growth_pct"), "%", None, "—", "median"),
            (f"{soak}: server RSS growth over the second half (windows full)", b,
             field("rss_second_half_growth_pct"), "%", None, "—", "median"),
            (f"{soak}: floor RSS growth over the second half", b + "-floor",
             field("rss_second_half_growth_pct"), "%", None, "—", "median"),
        ]
    f += [
        (f"Restart (SIGTERM, start again): messages lost of {int(settings['RESTART_MESSAGES']):,} "
         "sent", "restart", field("lost"), "", ("==", 0, "0"), "100 of 150", "all"),
        (f"Crash (SIGKILL, start again), `stored`: acknowledged messages lost of "
         f"{int(settings['RESTART_MESSAGES']):,} sent", "restart-kill9", field("lost"), "",
         ("==", 0, "0"), "—", "all"),
    ]
    jitter = (f"Delivery under jitter ({int(settings['JITTER_RECEIVERS']):,} clients, 10 rooms, "
              f"{int(settings['JITTER_RATE']):,} msg/s, {int(settings['JITTER_SECONDS']):,} s, "
              "each connection cut every 1–5 s and resumed)")
    f += [
        (f"{jitter}: share of deliveries exactly once", "jitter", field("exactly_once_share"),
         "", ("==", 1, "1 (100 %)"), "—", "all"),
        (f"{jitter}: duplicates", "jitter", field("duplicates"), "", ("==", 0, "0"), "—", "all"),
        (f"{jitter}: missing", "jitter", field("missing"), "", ("==", 0, "0"), "—", "all"),
        (f"{jitter}: reconnects", "jitter", field("reconnects"), "", None, "—", "median"),
        (f"{jitter}: cut to first replayed event p99 (includes the 1 s reconnect delay)",
         "jitter", field("cut_to_replay_ms_p99"), "ms", None, "—", "median"),
    ]
    jitter_csr = jitter.replace("and resumed)", "and recovered by connection-state recovery)")
    f += [
        (f"{jitter_csr}: share of deliveries exactly once", "jitter-recovery",
         field("exactly_once_share"), "", ("==", 1, "1 (100 %)"), "—", "all"),
        (f"{jitter_csr}: duplicates", "jitter-recovery", field("duplicates"), "", ("==", 0, "0"),
         "—", "all"),
        (f"{jitter_csr}: missing", "jitter-recovery", field("missing"), "", ("==", 0, "0"), "—",
         "all"),
        (f"{jitter_csr}: reconnects not recovered", "jitter-recovery",
         field("refused_resumes"), "", None, "—", "median"),
        (f"{jitter_csr}: cut to first replayed event p99 (includes the 1 s reconnect delay)",
         "jitter-recovery", field("cut_to_replay_ms_p99"), "ms", None, "—", "median"),
    ]
    storm = (f"Reconnect storm ({int(settings['STORM_RECEIVERS']):,} clients, "
             f"{int(settings['SOAK_ROOMS']):,} rooms, 100 msg/s, SIGTERM and start again)")
    f += [
        (f"{storm}: seconds from the server ready again until every client resumed", "storm",
         field("all_resumed_seconds"), "s", None, "—", "median"),
        (f"{storm}: deliveries missed", "storm", field("missing"), "", ("==", 0, "0"), "—", "all"),
        (f"{storm}: deliveries duplicated", "storm", field("duplicates"), "", ("==", 0, "0"), "—",
         "all"),
    ]
    storm_csr = storm.replace("SIGTERM and start again", "SIGTERM and start again; "
                              "connection-state recovery")
    f += [
        (f"{storm_csr}: seconds from the server ready again until every client recovered",
         "storm-recovery", field("all_resumed_seconds"), "s", None, "—", "median"),
        (f"{storm_csr}: deliveries missed", "storm-recovery", field("missing"), "",
         ("==", 0, "0"), "—", "all"),
        (f"{storm_csr}: deliveries duplicated", "storm-recovery", field("duplicates"), "",
         ("==", 0, "0"), "—", "all"),
    ]
    rooms = (f"{int(settings['CLUSTER_ROOMS']):,} rooms × {int(settings['CLUSTER_MEMBERS'])} "
             "members + 1 sender")
    rate = f"{int(settings['CLUSTER_RATE']):,} msg/s over {rooms}, two nodes"
    f += [
        (f"Cluster: deliveries/s at saturation, {rooms}, one node (core 0)", "cluster-fanout-1",
         field("deliveries_per_s"), "/s", None, "—", "median"),
        (f"Cluster: deliveries/s at saturation, {rooms}, two nodes (cores 0 and 1) + Redis",
         "cluster-fanout-2", field("deliveries_per_s"), "/s", None, "—", "median"),
        ("Cluster: two nodes over one, deliveries/s (same run)", "cluster-fanout-ratio",
         field("ratio"), "×", None, "—", "median"),
        ("Cluster: deliveries lost (saturation, both)", "cluster-fanout-2", field("lost"), "",
         ("==", 0, "0"), "—", "all"),
        (f"Cluster latency p50, {rate}: member on the room's owner node", "cluster-latency",
         field("owner_node_p50_ms"), "ms", None, "—", "median"),
        (f"Cluster latency p99, {rate}: member on the room's owner node", "cluster-latency",
         field("owner_node_p99_ms"), "ms", None, "—", "median"),
        (f"Cluster latency p50, {rate}: member on the other node", "cluster-latency",
         field("other_node_p50_ms"), "ms", None, "—", "median"),
        (f"Cluster latency p99, {rate}: member on the other node", "cluster-latency",
         field("other_node_p99_ms"), "ms", None, "—", "median"),
        (f"Cluster: Redis PUBLISHes during the run per event ({rate}; half the triggers "
         "forwarded; includes the presence updates of the 11,000 joins and leaves)",
         "cluster-latency", field("publishes_per_event"), "", None, "—", "median"),
        ("Cluster failover (three nodes, 100 msg/s): `kill -9` of the owner to the first "
         "trigger accepted by the new owner", "cluster-failover", field("failover_ms"), "ms",
         ("<=", 5000, "≤ 5 s"), "—", "median"),
        ("Cluster failover: acknowledged events lost, gaps in seq, not received on a third node",
         "cluster-failover",
         lambda r: (r.get("lost") or 0) + (r.get("history_gaps") or 0)
         + (r.get("not_received_on_third_node") or 0), "", ("==", 0, "0"), "—", "all"),
    ]
    nodes, per_node = int(settings["CROWD_NODES"]), int(settings["CROWD_CONNECTIONS"])
    crowd = f"Crowd ({nodes} nodes of a cluster on this machine, {per_node:,} idle connections each)"
    f += [
        (f"{crowd}: idle joined connections held at once (the nodes' gauges, summed)", "crowd",
         field("held_at_once"), "", (">=", 100000, "≥ 100,000"), "—", "median"),
        (f"{crowd}: connections still open after 20 s held", "crowd", field("still_open"), "",
         None, "—", "median"),
        (f"{crowd}: server memory per idle joined connection", "crowd",
         field("kib_per_connection"), "KiB", ("<=", 8, "≤ 8 KB"), "—", "median"),
    ]
    return f


def fmt(v, unit):
    if v is None:
        return "—"
    a = abs(v)
    if float(v).is_integer() and unit in ("", "/s"):
        s = f"{int(v):,}"
    elif a >= 100:
        s = f"{v:,.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.3f}"
    return s + {"": "", "/s": "/s"}.get(unit, " " + unit)


def meets(v, target):
    op, n, _ = target
    return {"<=": v <= n, ">=": v >= n, "==": v == n}[op]


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return (f"{os.cpu_count()} cores (`nproc` {sh('nproc')}), {cpu}; "
            f"{mem_kib / 1024 / 1024:.1f} GiB RAM; Linux {platform.release()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--started", required=True)
    ap.add_argument("--scenarios", required=True)
    ap.add_argument("--failures")
    a = ap.parse_args()

    rows = [json.loads(line) for line in open(a.results) if line.strip()]
    failures = []
    if a.failures and os.path.exists(a.failures):
        failures = [f.strip() for f in open(a.failures) if f.strip()]
    settings = {k: os.environ.get(k, d) for k, d in DEFAULTS.items()}
    reduced = {k: v for k, v in settings.items() if v != DEFAULTS[k]}

    # Same-run ratios: stored over accepted latency p99, run by run.
    for r in list(rows):
        b = r["bench"]
        if b == "cluster-fanout-2":
            one = [x for x in rows if x["bench"] == "cluster-fanout-1" and x["run"] == r["run"]]
            if one and one[0].get("deliveries_per_s"):
                rows.append({"bench": "cluster-fanout-ratio", "run": r["run"],
                             "ratio": r["deliveries_per_s"] / one[0]["deliveries_per_s"]})
        if b.startswith("latency-") and b.count("-") == 1:
            twin = [x for x in rows if x["bench"] == b + "-accepted" and x["run"] == r["run"]]
            if twin and r.get("p99_ms") is not None and twin[0].get("p99_ms"):
                rows.append({"bench": b + "-ratio", "run": r["run"],
                             "p99_ratio": r["p99_ms"] / twin[0]["p99_ms"]})

    # Same-run ratios to the floor.
    def ratio(r, twin, key):
        a, b = r.get(key), twin.get(key)
        return a / b if a is not None and b else None

    for r in list(rows):
        b = r["bench"]
        if b.endswith("-floor"):
            continue
        twin = [x for x in rows if x["bench"] in (b + "-floor", b.replace("-accepted", "") + "-floor")
                and x["run"] == r["run"]]
        if not twin:
            continue
        t = twin[0]
        rows.append({"bench": b + "-vs-floor", "run": r["run"],
                     "p50": ratio(r, t, "p50_ms"), "p99": ratio(r, t, "p99_ms"),
                     "cpu": ratio(r, t, "server_cpu_us_per_delivery"),
                     "mem": ratio(r, t, "kib_per_connection"),
                     "conn": ratio(r, t, "connections_per_s"),
                     "conn_cpu": ratio(r, t, "server_cpu_us_per_connection")})

    def matching(bench):
        return [r for r in rows if r["bench"] == bench]

    out = ["# Benchmarks", ""]
    if reduced or a.scenarios.split() != "fanout latency idle web persist history scan restart soak jitter storm cluster crowd".split():
        out += ["> **Smoke run, not the reference figures**: "
                + (f"reduced settings ({', '.join(f'{k}={v}' for k, v in sorted(reduced.items()))})"
                   if reduced else "default settings")
                + (f"; scenarios: {a.scenarios}" if a.scenarios.split() != "fanout latency idle web persist history scan restart soak jitter storm cluster crowd".split() else "")
                + ". Run `bench/run` with no overrides for figures to judge the targets by.", ""]
    out += [
        f"Measured {a.started} on commit `{a.commit}` by `bench/run`.",
        "",
        f"- Machine: {machine()}.",
        "- Server: release build, `roomThreads: 1`, no rate limits, pinned to core 0 "
        "(`taskset -c 0`); SQLite in WAL mode unless stated. Load generator (`dialogue-load`, "
        "Rust, tokio-tungstenite) pinned to core 1.",
        f"- Each figure: median (min–max) of {settings['RUNS']} runs "
        f"({settings['SOAK_RUNS']} for the soak), each against a fresh database. *met?* compares "
        "the median with the target, except correctness figures (losses, scan), which every run "
        "must meet.",
        "- Node reference: dialogue-ts on Node 20 on this machine kind, with a Node load "
        "generator (see PERFORMANCE.md).",
        "",
        "| figure | target | median (min–max) | met? | dialogue-ts on Node |",
        "|---|---|---|---|---|",
    ]
    for name, bench, get, unit, target, ref, judged in figures(settings):
        values = [v for v in (get(r) for r in matching(bench)) if v is not None]
        if not values:
            out.append(f"| {name} | {target[2] if target else '—'} | not run | — | {ref} |")
            continue
        med = statistics.median(values)
        cell = fmt(med, unit)
        if len(values) > 1:
            cell += f" ({fmt(min(values), unit)} – {fmt(max(values), unit)})"
        else:
            cell += " (1 run)"
        if target is None:
            met = "—"
        elif judged == "all":
            met = "yes" if all(meets(v, target) for v in values) else "**no**"
        else:
            met = "yes" if meets(med, target) else "**no**"
        out.append(f"| {name} | {target[2] if target else '—'} | {cell} | {met} | {ref} |")

    out += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    out += [f"| `{k}` | {v}{'' if v == DEFAULTS[k] else ' (default ' + DEFAULTS[k] + ')'} |"
            for k, v in settings.items()]
    out += ["", "## Scenarios", "",
            "- **fanout**: 100 subscribers and 4 senders in one room; the senders trigger "
            "`FANOUT_MESSAGES` events as fast as 32 unacknowledged triggers each allow. CPU per "
            "delivery = server user+system time (/proc/PID/stat) over deliveries counted at the "
            "subscribers (the senders' own copies are not counted, so the figure is slightly "
            "pessimistic).",
            "- **latency**: the same room at a fixed rate (`LATENCY_RATES`, msg/s in all) for "
            "`LATENCY_SECONDS`; latency is end to end, from a send timestamp in the event's data "
            "to its arrival at each subscriber. Run twice per run, alternating: "
            "`database.durability: stored` (fan-out after the commit; SQLite) and `accepted`; then "
            "the floor (`../shared/floor`'s `sio-limit --threads 1`, a minimal Socket.IO fan-out "
            "server without validation, history or database) on the same core, whose figures "
            "the product's are divided by, run by run.",
            "- **idle**: `IDLE_CONNECTIONS` connections opened `IDLE_CONCURRENCY` at a time, each "
            "joined to a room; server RSS (VmRSS) before and after, over the connections; the "
            "server's CPU (/proc/PID/stat) while they open, and from their close until it stays "
            "still for 300 ms, per connection; the same against the floor. Then `IDLE_MAX_CONNECTIONS` connections from source addresses "
            "127.0.0.1–8 (one address has about 28,000 ephemeral ports); this machine's open "
            "files limit (a hard 20,000 per process, which needs CAP_SYS_RESOURCE to raise) bounds "
            "how many one process can hold.",
            "- **web**: the chat page and the assets it links, fetched with `Accept-Encoding: gzip` "
            "(bytes as sent); then `WEB_REQUESTS` sequential `GET /` and `GET /api/stats` (which asks "
            "every room for its numbers) with `WEB_CONNECTIONS` connections joined over the "
            "`SOAK_ROOMS` rooms, one new TCP connection per request.",
            "- **persist**: 4 clients trigger `MESSAGES` events (64 in flight each) into a room "
            "whose 100-event window is full; every event is written (write-behind); rows/s from the "
            "start until the run's newest seq is stored (watched with max(seq), an index lookup), "
            "then the rows are counted. `stored` and `accepted`, alternating.",
            "- **history**: `DEEP_ROWS` rows bulk-loaded straight into the table, then "
            "`HISTORY_SAMPLES` requests of a 20-event page at each depth, offsets and cursor forms; "
            "the worse p99 of the two is shown.",
            "- **scan**: `SCAN_PRELOAD` events triggered through the server, then the whole history "
            "scrolled by cursor pages of 100 and checked.",
            "- **restart**: `RESTART_MESSAGES` events, SIGTERM, start again on the same port, wait "
            "for /readyz, scroll the history: how many acknowledged events are missing. Then the "
            "same with SIGKILL (a crash) on a fresh database.",
            "- **soak**: `SOAK_CONNECTIONS` connections over `SOAK_ROOMS` rooms (one sender per "
            "room, the rest subscribers), at each of `SOAK_RATES` msg/s in all for `SOAK_SECONDS`; "
            "RSS sampled every 5 s from the start of sending; the product and the floor "
            "alternating, ratios run by run. *Slots*: the run cut into 100 ms by send time; "
            "slow deliveries bunched into few slots are stalls of the whole machine (they hit the "
            "floor too), not a steady tail (`dialogue-load latency --timeline FILE` writes them).",
            "- **jitter**: `JITTER_RECEIVERS` clients in 10 rooms, each cutting its own connection "
            "(no close handshake) after a random 1–5 s and connecting again 1 s later with "
            "`dialogue:join {since}`; 4 senders trigger `JITTER_RATE` msg/s in all for "
            "`JITTER_SECONDS`; then every client must hold every seq of its room once. The "
            "same again (on a fresh database) with clients that come back as socket.io-client "
            "does with connection-state recovery: the CONNECT carries the session's `pid` and "
            "the last event's offset, and nothing is joined again (a reconnect that is not "
            "recovered falls back to `since`, and is counted).",
            "- **crowd**: `CROWD_NODES` nodes of one cluster (PostgreSQL, Redis) on this "
            "machine, node k on core k mod 2, each with a load generator of its own (one process "
            "may hold 20,000 open files here) opening `CROWD_CONNECTIONS` connections from 8 "
            "source addresses, joined over the `SOAK_ROOMS` rooms, and holding them 20 s after "
            "its memory reading; the nodes' `dialogue_connections` gauges, summed every second, "
            "give the most held at once; memory is the nodes' RSS growth over the connections.",
            "- **cluster**: on PostgreSQL. `CLUSTER_ROOMS` rooms with `CLUSTER_MEMBERS` "
            "subscribers and one sender each (11,000 connections), spread over the nodes (a "
            "room's members alternate between them); the senders trigger `CLUSTER_MESSAGES` "
            "events as fast as 4 unacknowledged triggers each allow, with one node (no Redis, "
            "core 0) and with two (cores 0 and 1, Redis unpinned); the load generator is not "
            "pinned. Then two nodes at `CLUSTER_RATE` msg/s for 10 s: latency apart for "
            "subscribers on their room's owner node and on the other node (owners from "
            "`/api/stats`), and Redis's PUBLISH count (`INFO commandstats`) per event. Then "
            "three nodes: a sender on one node triggers 100 msg/s into a room owned by another, "
            "which is `kill -9`ed after 2 s; the figure is the time from the kill to the first "
            "trigger acknowledged again, and every acknowledged event must be in the history "
            "and received by a member on the third node. On a 2-core machine the second node has "
            "no core of its own (the load generator, PostgreSQL and Redis share both): the ratio "
            "shows what the cluster path costs (a publish per event, the replicas, forwarded "
            "triggers), not how it scales.",
            "- **storm**: `STORM_RECEIVERS` clients over `SOAK_ROOMS` rooms while 4 senders trigger "
            "100 msg/s; SIGTERM, start again on the same port; each client reconnects and joins "
            "with `since`; then 5 s more of sending and the same exactly-once check. The same "
            "again with connection-state recovery.",
            "", f"Raw results (one JSON line per run): `{a.results}`."]
    if failures:
        out += ["", "## Failed runs", ""] + [f"- {f}" for f in failures]
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
