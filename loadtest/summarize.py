"""Summarise a loadtest/bench.sh run as a Markdown section (medians of rounds)."""
import json, os, statistics, subprocess, sys, datetime

work, rounds, cpus, duration, connections, consumers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
quota = int(sys.argv[7]) if len(sys.argv) > 7 and sys.argv[7] else 0
open_rounds = int(sys.argv[8]) if len(sys.argv) > 8 else 1
pgo = len(sys.argv) > 9 and sys.argv[9] == "1"
baseline = sys.argv[10] if len(sys.argv) > 10 else ""
tick = os.sysconf("SC_CLK_TCK")
labels = ["direct-get", "nginx-get", "ceiling-get", "passthrough-get", "passthroughbase-get", "direct-order", "nginx-order",
          "ceiling-order", "passthrough-order", "passthroughbase-order", "full-order", "fullnopgo-order", "fullbase-order",
          "nginx-h2get", "passthrough-h2get"]
rows = {}
for label in labels:
    runs = []
    for r in range(1, rounds + 1):
        try:
            s = json.load(open(f"{work}/{label}-{r}.json"))
            p = json.load(open(f"{work}/{label}-{r}.proc.json"))
        except FileNotFoundError:
            continue
        secs = s["seconds"] + 2  # the warm-up is in the CPU window too
        in_window = max(s["requests"] * secs / s["seconds"], 1)  # requests while the counters ran
        per_request = lambda ticks: ticks / tick * 1e6 / in_window
        cpu_us = per_request(p["cpu_ticks"])
        user_us = per_request(p["user_ticks"]) if "user_ticks" in p else float("nan")
        # The generator's core (loadgen, lowcode-sim, ClickHouse) and how
        # often the proxy slept for want of work, when the run recorded them.
        gen_busy = 100 * p["gen_busy_ticks"] / p["gen_ticks"] if p.get("gen_ticks") else float("nan")
        waits = p["idle_waits"] / in_window if "idle_waits" in p else float("nan")
        runs.append((s["rps"], s["latency_ms"]["p50"], s["latency_ms"]["p99"], cpu_us, p["rss_kib"] / 1024, s["errors"], s["statuses"], r,
                     user_us, gen_busy, waits))
    if runs:
        med = lambda i: statistics.median(x[i] for x in runs)
        rows[label] = dict(rps=med(0), p50=med(1), p99=med(2), cpu=med(3), user=med(8), rss=med(4), errors=sum(x[5] for x in runs), statuses=runs[-1][6],
                           by_round={x[7]: x[0] for x in runs}, gen_busy=med(9), waits=med(10))

# A row is generator-bound when the generator's core was nearly full: the
# proxy then waited for work, and its rate understates what it can do.
GEN_BOUND = 90

cpu_model = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
print(f"## Gateway vs nginx — {datetime.date.today()}")
print()
quota_opt = f" --proxy-quota {quota}" if quota else ""
pgo_opt = " --pgo" if pgo else ""
pgo_opt += f" --baseline {baseline}" if baseline else ""
where = (f"every proxy under test limited to {quota} % of CPU 0 (cgroup CPU quota), so that it, not the load generator, is the bottleneck"
         if quota else "proxy under test pinned to CPU 0")
# Every option with the value it had, defaults too: the run can be repeated exactly.
print(f"Command: `loadtest/bench.sh --rounds {rounds} --duration {duration} --connections {connections} "
      f"--consumers {consumers}{quota_opt} --open-rounds {open_rounds}{pgo_opt}` "
      f"({cpus} vCPU {cpu_model}; {where}, loadgen + lowcode-sim + ClickHouse on CPU 1; "
      f"closed loop, {connections} HTTP/1.1 keep-alive connections (HTTP/2 rows: {connections} concurrent streams over 4 connections), medians of {rounds} rounds; full mode spreads keys over {consumers} consumers).")
print()
print("| target | workload | rps | × nginx | × nginx by round | p50 ms | p99 ms | proxy CPU µs/req | of it user | CPU × nginx | idle waits /req | generator core busy | RSS MiB | non-2xx / errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
flagged = []
for label in labels:
    if label not in rows:
        continue
    r = rows[label]
    target, mix = label.rsplit("-", 1)
    name = {"fullnopgo": "full, no PGO", "passthroughbase": "passthrough, before", "fullbase": "full, before"}.get(target, target)
    base = rows.get(f"nginx-{mix}")
    ratio = f"{r['rps'] / base['rps']:.2f}" if base else ""
    # Each round against nginx in the same round: the VM's noise, in plain sight.
    by_round = " / ".join(f"{rps / base['by_round'][n]:.2f}" for n, rps in sorted(r["by_round"].items())
                          if base and base["by_round"].get(n)) if target != "nginx" else ""
    cpu = "" if target == "direct" else f"{r['cpu']:.1f}"
    user = "" if target == "direct" or r["user"] != r["user"] else f"{r['user']:.1f}"
    # nginx's CPU per request over ours: above 1 means cheaper than nginx.
    cpu_ratio = f"{base['cpu'] / r['cpu']:.2f}" if base and target != "direct" and r["cpu"] > 0 else ""
    rss = "" if target == "direct" else f"{r['rss']:.0f}"
    non2xx = sum(v for k, v in r["statuses"].items() if not k.startswith("2"))
    workload = {"get": "GET order", "order": "POST ~1 KB order", "h2get": "GET order, HTTP/2 h2c"}[mix]
    waits = "" if target == "direct" or r["waits"] != r["waits"] else f"{r['waits']:.2f}"
    busy = "" if r["gen_busy"] != r["gen_busy"] else f"{r['gen_busy']:.0f} %"
    if target != "direct" and r["gen_busy"] >= GEN_BOUND:
        busy += " †"
        flagged.append(f"{name} {workload}")
    print(f"| {name} | {workload} | {r['rps']:.0f} | {ratio} | {by_round} | {r['p50']:.2f} | {r['p99']:.2f} | {cpu} | {user} | {cpu_ratio} | {waits} | {busy} | {rss} | {non2xx} / {r['errors']} |")
print()
print("`full` answers the 10 % invalid orders itself (400), the others forward them; `direct` has no proxy (CPU and RSS columns empty). "
      "`ceiling` is `ceiling-proxy`, a bare tokio + httparse loop that forwards bytes unchanged: the floor a tokio proxy can reach, "
      "not a product (no routing, header rewriting, timeouts or logging). `of it user` is the user-space part of the CPU per request; "
      "the rest is the kernel's. "
      "`CPU × nginx` is nginx's CPU per request over the row's: above 1 is cheaper than nginx. "
      "`× nginx by round` divides each round's rate by nginx's in the same round; its spread is the machine's noise."
      + " `idle waits /req` counts the proxy's sleeps for want of work (voluntary context switches) per request, and "
      "`generator core busy` how busy CPU 1 (loadgen, lowcode-sim, ClickHouse) was: a proxy that sets the pace seldom sleeps."
      + (f" † marks rows whose generator core was at least {GEN_BOUND} % busy: there the generator, not only the proxy, "
         f"set the pace and the ratio understates the proxy ({'; '.join(flagged)}); a lower --proxy-quota gives the generator room."
         if flagged else "")
      + (" The passthrough and full rows run the profile-guided build (`scripts/build-pgo.sh`, trained on a short run of these "
         "workloads); `full, no PGO` is the plain release build of the same commit with the same bundle." if pgo else "")
      + (f" `passthrough, before` and `full, before` run `{baseline}`, the build before the change, beside the current one in "
         "every round (same bundles, same ClickHouse): the change's cost is the ratio of the two rows." if baseline else ""))

open_runs = {"direct": [], "nginx": [], "full": []}
for t in open_runs:
    for r in range(1, open_rounds + 1):
        try:
            open_runs[t].append(json.load(open(f"{work}/open-{t}-order-{r}.json")))
        except FileNotFoundError:
            pass
if not open_runs["nginx"]:
    del open_runs["nginx"]  # a run from before nginx joined the open loop
if all(open_runs.values()):
    n = min(len(v) for v in open_runs.values())
    rate = open_runs["direct"][0]["target_rate"]
    print()
    print(f"Latency at half of nginx's median POST rate: {rate} rps offered, open loop "
          f"(constant arrival rate, latency from each request's intended send time), {connections} connections, "
          f"{', '.join(open_runs)} in turn, {n} rounds (medians). ClickHouse runs on the proxy's core under SCHED_IDLE for this part: "
          f"it uses only the idle half of that core and never preempts the proxy or the generator."
          + (" The CPU quota is lifted for this part." if quota else ""))
    print()
    print("| target | offered rps | achieved rps | p50 ms | p99 ms | p99.9 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    med = lambda runs, f: statistics.median(f(s) for s in runs)
    for t, runs in open_runs.items():
        print(f"| {t} | {rate} | {med(runs, lambda s: s['rps']):.0f} | {med(runs, lambda s: s['latency_ms']['p50']):.2f} | "
              f"{med(runs, lambda s: s['latency_ms']['p99']):.2f} | {med(runs, lambda s: s['latency_ms']['p999']):.2f} | "
              f"{sum(s['errors'] for s in runs)} |")
    def over_direct(target):
        """Each round's p99 excess of `target` over direct's, and their median."""
        added = [t["latency_ms"]["p99"] - d["latency_ms"]["p99"] for d, t in zip(open_runs["direct"], open_runs[target])]
        return statistics.median(added), ", ".join(f"{a:+.2f}" for a in added)

    median_added, rounds_added = over_direct("full")
    verdict = "met" if median_added <= 1.0 else "not met"
    print()
    line = (f"Full mode adds {median_added:.2f} ms at p99 over going direct, median of the rounds "
            f"({rounds_added} ms; aim ≤ 1 ms: {verdict}).")
    if "nginx" in open_runs:
        hop, rounds_hop = over_direct("nginx")
        line += f" nginx adds {hop:.2f} ms at the same rate ({rounds_hop} ms): the cost of a proxy hop on this machine."
    print(line)
