#!/usr/bin/env python3
"""Runs AsyncUDP's benchmarks side by side with libuv C, raw recvmmsg C and SwiftNIO.

Every workload runs with the SAME implementation on both ends (sender and receiver, client and
echo server), and counts the CPU of both processes (each measures itself with getrusage, from the
moment it is bound to the moment it reports). Each round runs every implementation once per
workload, in an order rotated by one each round, so that drift in the machine's state affects them
alike. Reported: the median over rounds with min and max, and the ratio to libuv C, taken pair by
pair within a round and then the median of those per-round ratios.

Writes RESULTS.md (tables), results.json (every per-round figure, the summary) and results.svg
(a bar chart of the headline ratios). Standard library only.
"""
import argparse, datetime, json, os, platform, statistics, subprocess, sys, time
from xml.sax.saxutils import escape

# The implementations, in the order of the tables. "binary" says which program plays both roles:
# uvbench (reference/uvbench.c), rawbench (reference/rawbench.c), or udp-bench (Swift, with the
# implementation's name as its second argument). An implementation that udp-bench does not know
# (`udp-bench probe NAME` exits 3) is skipped with a note: "batch" waits for AsyncUDP's batch API.
IMPLS = [
    {"key": "c", "binary": "uvbench", "name": "libuv C (reference)"},
    {"key": "rawmmsg", "binary": "rawbench", "name": "raw recvmmsg/sendmmsg C"},
    {"key": "async", "binary": "udp-bench", "name": "AsyncUDP async, global executor"},
    {"key": "affine", "binary": "udp-bench", "name": "AsyncUDP async, loop-affine"},
    {"key": "batch", "binary": "udp-bench", "name": "AsyncUDP batch API"},
    {"key": "callback", "binary": "udp-bench", "name": "AsyncUDP callback layer"},
    {"key": "nio-handler", "binary": "udp-bench", "name": "SwiftNIO ChannelHandler"},
    {"key": "nio-async", "binary": "udp-bench", "name": "SwiftNIO NIOAsyncChannel"},
]
NAMES = {i["key"]: i["name"] for i in IMPLS}
BASE = "c"

# (workload, key, label, direction): direction +1 higher is better, -1 lower is better, 0 no ratio.
METRICS = [
    ("W1 flood 64 B", "rate", "datagrams/s received", +1),
    ("W1 flood 64 B", "loss_pct", "loss %", 0),
    ("W1 flood 64 B", "cpu_s_per_m", "CPU s per 1M datagrams, both processes", -1),
    ("W1 flood 1200 B", "rate", "datagrams/s received", +1),
    ("W1 flood 1200 B", "loss_pct", "loss %", 0),
    ("W1 flood 1200 B", "cpu_s_per_m", "CPU s per 1M datagrams, both processes", -1),
    ("W1 flood 64 B", "peak_rss_mib", "receiver's peak RSS MiB", 0),
    ("W2 ping-pong", "p50_us", "p50 µs", -1),
    ("W2 ping-pong", "p99_us", "p99 µs", -1),
    ("W3 windowed echo", "rate", "round trips/s", +1),
    ("W3 windowed echo", "cpu_s_per_m", "CPU s per 1M round trips, both processes", -1),
    ("Idle socket", "bytes", "heap bytes per idle socket", -1),
]
SHORT = {
    ("W1 flood 64 B", "rate"): "W1 64 B rate", ("W1 flood 64 B", "cpu_s_per_m"): "W1 64 B CPU",
    ("W1 flood 1200 B", "rate"): "W1 1200 B rate", ("W1 flood 1200 B", "cpu_s_per_m"): "W1 1200 B CPU",
    ("W2 ping-pong", "p50_us"): "W2 p50", ("W2 ping-pong", "p99_us"): "W2 p99",
    ("W3 windowed echo", "rate"): "W3 rate", ("W3 windowed echo", "cpu_s_per_m"): "W3 CPU",
    ("Idle socket", "bytes"): "idle bytes",
}
# The chart: (workload, key, label); ratios of "lower is better" figures are drawn inverted.
CHART = [
    ("W1 flood 64 B", "rate", "W1 64 B datagrams/s"),
    ("W2 ping-pong", "p50_us", "W2 ping-pong p50"),
    ("W3 windowed echo", "rate", "W3 round trips/s"),
    ("W3 windowed echo", "cpu_s_per_m", "W3 CPU per round trip"),
]
# W4, one-way bulk transfer of 1,200-byte datagrams (issue 12): implementations of its own. Each
# has a receiver ("sink") and a sender ("send") command; both ends are the implementation under
# test (for "gso" the receiver is the plain batch sink, so only the sender differs from "plain").
W4_SIZE, W4_SEGMENTS = 1200, 54  # 54 x 1,200 = 64,800 bytes per GSO send
W4_IMPLS = [
    {"key": "c", "name": "libuv C (reference)",
     "sink": lambda a, n: [a.ref, "sink", n], "send": lambda a, port, n: [a.ref, "flood", port, n, W4_SIZE]},
    {"key": "rawgso", "name": "raw C, UDP_SEGMENT + UDP_GRO",
     "sink": lambda a, n: [a.raw, "grosink", n], "send": lambda a, port, n: [a.raw, "gsoflood", port, n, W4_SIZE, W4_SEGMENTS]},
    {"key": "plain", "name": "AsyncUDP batch API, no offloads",
     "sink": lambda a, n: [a.bin, "sink", "batch", n], "send": lambda a, port, n: [a.bin, "flood", "batch", port, n, W4_SIZE]},
    {"key": "gso", "name": "AsyncUDP GSO send, plain receive",
     "sink": lambda a, n: [a.bin, "sink", "batch", n],
     "send": lambda a, port, n: [a.bin, "gso-flood", port, n, W4_SIZE, W4_SEGMENTS]},
    {"key": "gso-gro", "name": "AsyncUDP GSO send + GRO receive",
     "sink": lambda a, n: [a.bin, "gro-sink", n],
     "send": lambda a, port, n: [a.bin, "gso-flood", port, n, W4_SIZE, W4_SEGMENTS]},
]
W4_NAMES = {i["key"]: i["name"] for i in W4_IMPLS}
W4 = "W4 bulk 1200 B"
W4_METRICS = [
    (W4, "goodput_mbs", "goodput MB/s at the receiver", +1),
    (W4, "loss_pct", "loss %", 0),
    (W4, "cpu_s_per_gb", "CPU s per GB received, both processes", -1),
]
WORKLOADS = ["w1", "w2", "w3", "idle", "w4"]

COLORS = {"rawmmsg": "#7f7f7f", "async": "#d62728", "affine": "#ff7f0e", "batch": "#9467bd",
          "callback": "#2ca02c", "nio-handler": "#1f77b4", "nio-async": "#17becf"}


class Harness:
    def __init__(self, args):
        self.args = args
        self.children = []

    def command(self, impl, mode, *extra):
        binary = next(i["binary"] for i in IMPLS if i["key"] == impl)
        head = {"uvbench": [self.args.ref, mode], "rawbench": [self.args.raw, mode],
                "udp-bench": [self.args.bin, mode, impl]}[binary]
        return head + [str(x) for x in extra]

    def known(self, impl):
        binary = next(i["binary"] for i in IMPLS if i["key"] == impl)
        if binary == "rawbench":
            return bool(self.args.raw) and os.path.exists(self.args.raw)
        if binary != "udp-bench":
            return True
        return subprocess.run(self.command(impl, "probe"), capture_output=True).returncode == 0

    def start(self, cmd):
        """Starts a server and returns it with its port, once it has printed "ready PORT"."""
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.children.append(proc)
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            proc.kill()
            raise RuntimeError(f"{' '.join(cmd)} did not start: {line!r} {proc.stderr.read()[-500:]}")
        return proc, int(line.split()[1])

    def client(self, cmd, timeout=120):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-500:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def result(self, proc, timeout=30):
        """The server's final JSON line. Closes its stdin: an echo server reports then; a sink
        reports by itself (after COUNT datagrams or 300 ms without one)."""
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError("server did not report in time")
        return json.loads(out.strip().splitlines()[-1])

    def cleanup(self):
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.children = []

    # ---- workloads --------------------------------------------------------------------------

    def flood(self, impl, size):
        n = self.args.flood
        proc, port = self.start(self.command(impl, "sink", n))
        sender = self.client(self.command(impl, "flood", port, n, size))
        sink = self.result(proc)
        received = max(sink["received"], 1)
        return {"rate": sink["rate"], "loss_pct": 100.0 * (1 - sink["received"] / sender["sent"]),
                "cpu_s_per_m": (sender["cpu"] + sink["cpu"]) / received * 1e6,
                "sender_rate": sender["rate"], "sender_cpu": sender["cpu"], "receiver_cpu": sink["cpu"],
                "received": sink["received"], "peak_rss_mib": sink["peak_rss_kib"] / 1024}

    def echo(self, impl, mode, *extra):
        proc, port = self.start(self.command(impl, "serve"))
        client = self.client(self.command(impl, mode, port, *extra))
        server = self.result(proc)
        trips = max(client["round_trips"] - client["lost"], 1)
        return {"rate": client["rate"], "p50_us": client["p50_us"], "p99_us": client["p99_us"],
                "lost": client["lost"], "cpu_s_per_m": (client["cpu"] + server["cpu"]) / trips * 1e6,
                "client_cpu": client["cpu"], "server_cpu": server["cpu"]}

    def bulk(self, impl):
        """W4: the sender sends `n` datagrams of 1,200 bytes (plain, or in GSO buffers of 54) as
        fast as the kernel takes them; the receiver counts datagrams (a GRO buffer counts as the
        datagrams it carries) until all arrived or 300 ms passed without one."""
        n = self.args.w4_datagrams
        spec = next(i for i in W4_IMPLS if i["key"] == impl)
        proc, port = self.start([str(x) for x in spec["sink"](self.args, n)])
        sender = self.client([str(x) for x in spec["send"](self.args, port, n)])
        sink = self.result(proc)
        received = max(sink["received"], 1)
        gigabytes = received * W4_SIZE / 1e9
        # From the sender's first send to the receiver's last arrival (both CLOCK_MONOTONIC): not
        # from the first arrival, since a receiver that starts reading late drains its full
        # buffer in a burst that would inflate the rate.
        span = sink["last_at"] - sender["start_at"]
        return {"goodput_mbs": gigabytes * 1e3 / span, "seconds": span,
                "loss_pct": 100.0 * (1 - sink["received"] / sender["sent"]),
                "cpu_s_per_gb": (sender["cpu"] + sink["cpu"]) / gigabytes,
                "sent": sender["sent"], "received": sink["received"], "bytes": sink.get("bytes"),
                "sender_mbs": sender["rate"] * W4_SIZE / 1e6, "sender_cpu": sender["cpu"], "receiver_cpu": sink["cpu"],
                "peak_rss_mib": sink["peak_rss_kib"] / 1024}

    def idle(self, impl):
        result = self.client(self.command(impl, "idle", self.args.sockets), timeout=300)
        return {"bytes": result["bytes_per_socket"]}

    def scale(self, loops):
        """Scaling section (--scale): AsyncUDP's UVLoopGroup sink against the C flood from 16 flows."""
        n = self.args.flood
        proc, port = self.start([self.args.bin, "sink-group", str(loops), str(n)])
        sender = self.client([self.args.ref, "flood", str(port), str(n), "64", "16"])
        sink = self.result(proc)
        return {"rate": sink["rate"], "loss_pct": 100.0 * (1 - sink["received"] / sender["sent"])}


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Linux {platform.release()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", help="udp-bench (Swift implementations)")
    parser.add_argument("--ref", help="uvbench (libuv C)")
    parser.add_argument("--raw", help="rawbench (raw recvmmsg/sendmmsg C); optional")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--flood", type=int, default=1_000_000, help="W1 datagrams per run")
    parser.add_argument("--pingpong", type=int, default=100_000, help="W2 round trips per run")
    parser.add_argument("--window", type=int, default=300_000, help="W3 round trips per run")
    parser.add_argument("--sockets", type=int, default=10_000, help="idle sockets")
    parser.add_argument("--w4-bytes", type=int, default=1 << 30,
                        help="W4 bytes per run (default 1 GiB; rounded up to whole GSO buffers of 54 x 1,200 bytes)")
    parser.add_argument("--impls", default=",".join(i["key"] for i in IMPLS),
                        help="W1-W3 and idle implementations")
    parser.add_argument("--w4-impls", default=",".join(i["key"] for i in W4_IMPLS), help="W4 implementations")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="workloads to run, of " + ",".join(WORKLOADS) + " (default all). When some are left out, "
                        "their figures are kept from the existing --json file and the tables are rewritten from both")
    parser.add_argument("--scale", action="store_true", help="also run the loop-group scaling section")
    parser.add_argument("--quick", action="store_true", help="small counts, one round: a smoke test")
    parser.add_argument("--out", help="the tables (default RESULTS.md; .build/quick-RESULTS.md with --quick)")
    parser.add_argument("--json", help="the figures (default results.json; .build/quick-results.json with --quick)")
    parser.add_argument("--svg", help="the chart (default results.svg; .build/quick-results.svg with --quick)")
    parser.add_argument("--chart-from", metavar="JSON", help="only redraw the chart (--svg) from a results.json")
    args = parser.parse_args()
    # A smoke test never overwrites the committed results.
    prefix = ".build/quick-" if args.quick else ""
    args.out = args.out or prefix + "RESULTS.md"
    args.json = args.json or prefix + "results.json"
    args.svg = args.svg or prefix + "results.svg"
    if args.chart_from:
        with open(args.chart_from) as f:
            saved = json.load(f)
        with open(args.svg, "w") as f:
            f.write(chart(saved["meta"], list(saved["meta"]["implementations"]), saved["summary"]))
        return
    if not (args.bin and args.ref):
        parser.error("--bin and --ref are required")
    if args.quick:
        args.flood, args.pingpong, args.window, args.sockets = 100_000, 5_000, 30_000, 1_000
        args.w4_bytes = 64 << 20
    per_buffer = W4_SIZE * W4_SEGMENTS
    args.w4_datagrams = -(-args.w4_bytes // per_buffer) * W4_SEGMENTS
    selected = [w for w in args.workloads.split(",") if w]
    if [w for w in selected if w not in WORKLOADS]:
        parser.error(f"--workloads: known workloads are {','.join(WORKLOADS)}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    harness = Harness(args)
    wanted = [k for k in args.impls.split(",") if k]
    unknown = [k for k in wanted if k not in NAMES]
    if unknown:
        sys.exit(f"unknown implementation(s): {', '.join(unknown)}; known: {', '.join(NAMES)}")
    impls, skipped = [], []
    for key in wanted:
        (impls if harness.known(key) else skipped).append(key)
    for key in skipped:
        print(f"skipping {key} ({NAMES[key]}): not implemented by the benchmark binaries yet", flush=True)
    workloads = {
        "W1 flood 64 B": lambda i: harness.flood(i, 64),
        "W1 flood 1200 B": lambda i: harness.flood(i, 1200),
        "W2 ping-pong": lambda i: harness.echo(i, "pingpong", args.pingpong),
        "W3 windowed echo": lambda i: harness.echo(i, "window", args.window, 64),
        "Idle socket": harness.idle,
    }
    tags = {"W1 flood 64 B": "w1", "W1 flood 1200 B": "w1", "W2 ping-pong": "w2", "W3 windowed echo": "w3",
            "Idle socket": "idle"}
    workloads = {w: fn for w, fn in workloads.items() if tags[w] in selected}
    run_w4 = "w4" in selected
    w4_wanted = [k for k in args.w4_impls.split(",") if k]
    if [k for k in w4_wanted if k not in W4_NAMES]:
        sys.exit(f"unknown W4 implementation(s) in {args.w4_impls}; known: {', '.join(W4_NAMES)}")
    w4_impls = [k for k in w4_wanted if k != "rawgso" or (args.raw and os.path.exists(args.raw))]
    w4_results = {i: [] for i in w4_impls}
    # results[workload][impl] = one entry per round: a dict of figures, or None if the run failed.
    results = {w: {i: [] for i in impls} for w in workloads}
    scaling = {1: [], 2: []}
    failures = []
    began = time.time()
    try:
        for round_index in range(args.rounds):
            shift = round_index % len(impls)
            order = impls[shift:] + impls[:shift]
            for workload, fn in workloads.items():
                if workload == "Idle socket" and round_index > 0:
                    continue  # deterministic: once is enough
                for impl in order:
                    try:
                        value = fn(impl)
                    except Exception as error:  # one failed run must not lose the others
                        value = None
                        failures.append(f"round {round_index + 1}, {workload}, {impl}: {error}")
                        print(f"FAILED: {failures[-1]}", flush=True)
                    finally:
                        harness.cleanup()
                    results[workload][impl].append(value)
                    shown = {k: round(v, 2) for k, v in value.items()} if value else value
                    print(f"round {round_index + 1}/{args.rounds}  {workload:17} {impl:12} {shown}", flush=True)
            if run_w4:
                shift = round_index % len(w4_impls)
                for impl in w4_impls[shift:] + w4_impls[:shift]:
                    try:
                        value = harness.bulk(impl)
                    except Exception as error:
                        value = None
                        failures.append(f"round {round_index + 1}, {W4}, {impl}: {error}")
                        print(f"FAILED: {failures[-1]}", flush=True)
                    finally:
                        harness.cleanup()
                    w4_results[impl].append(value)
                    shown = {k: round(v, 2) for k, v in value.items() if v is not None} if value else value
                    print(f"round {round_index + 1}/{args.rounds}  {W4:17} {impl:12} {shown}", flush=True)
            if args.scale and "async" in impls:
                for loops in (1, 2):
                    try:
                        scaling[loops].append(harness.scale(loops))
                    finally:
                        harness.cleanup()
                    print(f"round {round_index + 1}/{args.rounds}  scale, {loops} loop(s)  {scaling[loops][-1]}", flush=True)
    finally:
        harness.cleanup()
    elapsed = time.time() - began
    summary = summarize(impls, results)
    w4 = None
    if run_w4:
        w4 = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                       "machine": machine(), "rounds": args.rounds, "quick": args.quick,
                       "bytes": args.w4_datagrams * W4_SIZE, "datagrams": args.w4_datagrams, "size": W4_SIZE,
                       "segments": W4_SEGMENTS, "implementations": {k: W4_NAMES[k] for k in w4_impls},
                       "failures": [f for f in failures if W4 in f]},
              "metrics": [{"workload": w, "key": k, "label": l, "direction": d} for w, k, l, d in W4_METRICS],
              "summary": summarize(w4_impls, {W4: w4_results}, W4_METRICS), "rounds": w4_results}
    if not workloads:
        # W4 alone: the other workloads' figures and their meta stay those of the existing run.
        try:
            with open(args.json) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = None
        if previous:
            print(f"W1-W3 and idle: kept from {args.json} ({previous['meta']['date']})", flush=True)
            previous["w4"] = w4
            text = report(previous["meta"], list(previous["meta"]["implementations"]), previous["summary"],
                          {1: [], 2: [], **{int(k): v for k, v in previous.get("scaling", {}).items()}}, w4)
            with open(args.out, "w") as f:
                f.write(text)
            with open(args.json, "w") as f:
                json.dump(previous, f, indent=1)
                f.write("\n")
            print("\n" + text)
            print(f"wrote {args.out}, {args.json} ({elapsed:.0f} s of runs)")
            return
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "rounds": args.rounds, "seconds": round(elapsed, 1),
        "counts": {"flood": args.flood, "pingpong": args.pingpong, "window": args.window, "window_size": 64,
                   "sockets": args.sockets},
        "implementations": {k: NAMES[k] for k in impls}, "skipped": {k: NAMES[k] for k in skipped},
        "failures": failures, "quick": args.quick,
    }
    text = report(meta, impls, summary, scaling, w4)
    print("\n" + text)
    with open(args.out, "w") as f:
        f.write(text)
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "metrics": [{"workload": w, "key": k, "label": l, "direction": d} for w, k, l, d in METRICS],
                   "summary": summary, "rounds": results,
                   "scaling": {str(k): v for k, v in scaling.items() if v}, "w4": w4}, f, indent=1)
        f.write("\n")
    with open(args.svg, "w") as f:
        f.write(chart(meta, impls, summary))
    print(f"wrote {args.out}, {args.json}, {args.svg} ({elapsed:.0f} s of runs)")


def summarize(impls, results, metrics=None):
    """summary["workload|key"][impl] = {median, min, max, n, ratio, ratio_min, ratio_max, ratios}."""
    summary = {}
    for workload, key, _, direction in metrics or METRICS:
        per_impl = {}
        base_runs = results.get(workload, {}).get(BASE, [])
        for impl in impls:
            runs = results.get(workload, {}).get(impl, [])
            values = [r[key] for r in runs if r is not None]
            if not values:
                per_impl[impl] = None
                continue
            entry = {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
            if direction and impl != BASE and base_runs:
                # Pair by pair within a round (the idle run happens once: round 1 only).
                ratios = [r[key] / b[key] for r, b in zip(runs, base_runs) if r is not None and b is not None and b[key]]
                if ratios:
                    entry.update(ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios), ratios=ratios)
            per_impl[impl] = entry
        summary[f"{workload}|{key}"] = per_impl
    return summary


def fmt(value):
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


GOALS = [  # issue 11's first milestone: (impl, workload, key, label, test on the ratio or value)
    ("affine", "W3 windowed echo", "rate", "W3 round trips/s ≥ 0.95x C", lambda e: e["ratio"] >= 0.95, "ratio"),
    ("async", "W3 windowed echo", "rate", "W3 round trips/s ≥ 0.70x C", lambda e: e["ratio"] >= 0.70, "ratio"),
    ("batch", "W3 windowed echo", "rate", "W3 round trips/s ≥ 1.0x C", lambda e: e["ratio"] >= 1.0, "ratio"),
    ("affine", "W3 windowed echo", "cpu_s_per_m", "W3 CPU per round trip ≤ 1.2x C", lambda e: e["ratio"] <= 1.2, "ratio"),
    ("async", "W3 windowed echo", "cpu_s_per_m", "W3 CPU per round trip ≤ 1.8x C", lambda e: e["ratio"] <= 1.8, "ratio"),
    ("batch", "W3 windowed echo", "cpu_s_per_m", "W3 CPU per round trip ≤ 1.0x C", lambda e: e["ratio"] <= 1.0, "ratio"),
    ("affine", "W1 flood 64 B", "rate", "W1 64 B received ≥ 0.95x C", lambda e: e["ratio"] >= 0.95, "ratio"),
    ("async", "W1 flood 64 B", "rate", "W1 64 B received ≥ 0.95x C", lambda e: e["ratio"] >= 0.95, "ratio"),
    ("batch", "W1 flood 64 B", "rate", "W1 64 B received ≥ 1.0x C", lambda e: e["ratio"] >= 1.0, "ratio"),
    ("affine", "W1 flood 64 B", "loss_pct", "W1 64 B loss ≤ 1%", lambda e: e["median"] <= 1.0, "median"),
    ("async", "W1 flood 64 B", "loss_pct", "W1 64 B loss ≤ 1%", lambda e: e["median"] <= 1.0, "median"),
    ("batch", "W1 flood 64 B", "loss_pct", "W1 64 B loss ≤ 1%", lambda e: e["median"] <= 1.0, "median"),
    ("affine", "W2 ping-pong", "p50_us", "W2 p50 ≤ 1.1x C", lambda e: e["ratio"] <= 1.1, "ratio"),
    ("async", "W2 ping-pong", "p50_us", "W2 p50 ≤ 1.5x C", lambda e: e["ratio"] <= 1.5, "ratio"),
]


def report_w4(w4):
    """The W4 section: its own implementations, figures and ratios to libuv C, and issue 12's goal."""
    meta, summary = w4["meta"], w4["summary"]
    impls = list(meta["implementations"])
    lines = ["## W4 bulk transfer, 1,200-byte datagrams (issue 12)", "",
             f"{meta['date']}; {meta['machine']}; {meta['rounds']} round(s)"
             f"{'; --quick: a smoke test, not a measurement' if meta['quick'] else ''}. "
             f"A sender sends {meta['datagrams']:,} datagrams of {meta['size']:,} bytes ({meta['bytes'] / 2**20:,.0f} MiB) "
             "one way as fast as the kernel takes them (nothing paces it but the kernel's back-pressure on the "
             "sender's socket); a receiver with a 4 MiB SO_RCVBUF counts the datagrams that arrive (a GRO buffer "
             "counts as the datagrams it carries) until all arrived or 300 ms passed without one. Goodput: received "
             "datagrams x 1,200 bytes divided by the time from the sender's first send to the receiver's last arrival "
             "(CLOCK_MONOTONIC in both processes; 1 MB = 10^6 bytes). Loss: "
             "1 − received / sent (loopback drops what overflows the receiver's buffer). CPU: both processes, per "
             f"GB received. GSO sends carry {meta['segments']} datagrams ({meta['segments'] * meta['size']:,} bytes) each. "
             "Both ends are the implementation under test; \"AsyncUDP GSO send, plain receive\" uses the plain "
             "batch receiver, so it differs from \"no offloads\" in its sender only.", ""]
    lines.append("| implementation | goodput MB/s | ratio to C | loss % | CPU s per GB | ratio to C |")
    lines.append("|---|---|---|---|---|---|")
    for impl in impls:
        cells = []
        for key in ("goodput_mbs", "loss_pct", "cpu_s_per_gb"):
            entry = summary[f"{W4}|{key}"].get(impl)
            if not entry:
                cells += ["failed"] if key == "loss_pct" else ["failed", "n/a"]
                continue
            value = f"{fmt(entry['median'])} ({fmt(entry['min'])}–{fmt(entry['max'])})" if entry["n"] > 1 else fmt(entry["median"])
            cells.append(value)
            if key == "loss_pct":
                continue
            if impl == BASE:
                cells.append("1.00x")
            elif "ratio" in entry:
                ratio = f"**{entry['ratio']:.2f}x**"
                if len(entry["ratios"]) > 1:
                    ratio += f" ({entry['ratio_min']:.2f}–{entry['ratio_max']:.2f})"
                cells.append(ratio)
            else:
                cells.append("n/a")
        lines.append(f"| {W4_NAMES[impl]} | " + " | ".join(cells) + " |")
    lines += ["", "Median (min–max over rounds); ratios are the median of the per-round ratios to libuv C.", ""]
    if meta["failures"]:
        lines += ["Failed runs (left out of the figures):", ""] + [f"- {f}" for f in meta["failures"]] + [""]
    gro = summary[f"{W4}|goodput_mbs"].get("gso-gro")
    raw = summary[f"{W4}|goodput_mbs"].get("rawgso")
    if gro and "ratio" in gro:
        lines += ["### Goal (issue 12)", ""]
        loss = summary[f"{W4}|loss_pct"]
        lost = lambda k: f"{loss[k]['median']:.1f} %" if loss.get(k) else "n/a"
        lines.append(f"- {'met' if gro['ratio'] >= 3 else '**not met**'}: AsyncUDP GSO + GRO goodput ≥ 3x libuv C — "
                     f"measured {gro['ratio']:.2f}x (loss: GSO + GRO {lost('gso-gro')}, libuv C {lost(BASE)})")
        if raw:
            # Within 0.8x of the raw C reference: paired per round as the other ratios.
            runs = w4["rounds"]
            pairs = [g["goodput_mbs"] / r["goodput_mbs"] for g, r in zip(runs["gso-gro"], runs["rawgso"])
                     if g and r and r["goodput_mbs"]]
            if pairs:
                ratio = statistics.median(pairs)
                lines.append(f"- {'met' if ratio >= 0.8 else '**not met**'}: AsyncUDP GSO + GRO goodput ≥ 0.8x raw C "
                             f"(UDP_SEGMENT + UDP_GRO) — measured {ratio:.2f}x (raw C loss {lost('rawgso')})")
        lines.append("")
    return lines


def report(meta, impls, summary, scaling, w4=None):
    c = meta["counts"]
    lines = ["# AsyncUDP benchmark results", "",
             f"{meta['date']}; {meta['machine']}; {meta['rounds']} round(s), {meta['seconds']:.0f} s of runs; "
             f"`make bench` (Benchmarks/run.sh){' --quick: a smoke test, not a measurement' if meta['quick'] else ''}.", "",
             "**Both ends of every workload are the same implementation**, and CPU is the sum over both processes "
             "(each measures itself with getrusage from the moment it is bound). "
             f"W1: a sender sends {c['flood']:,} datagrams as fast as its API goes to a receiver that counts them "
             "(rate from the first to the last arrival; CPU per 1M datagrams received). "
             f"W2: {c['pingpong']:,} round trips, one 64-byte datagram in flight. "
             f"W3: {c['window']:,} round trips, {c['window_size']} datagrams in flight. "
             f"Idle: {c['sockets']:,} bound sockets. See README.md for what each implementation does.", ""]
    # Headline: ratios only.
    lines += ["## Ratios to libuv C", "",
              "Median of the per-round ratios (implementation ÷ libuv C, paired within each round). "
              "Rates: higher is better; latency, CPU and memory: lower is better.", ""]
    head = [m for m in METRICS if m[3] != 0]
    lines.append("| implementation | " + " | ".join(SHORT[(w, k)] for w, k, _, _ in head) + " |")
    lines.append("|---" * (len(head) + 1) + "|")
    for impl in impls:
        cells = []
        for workload, key, _, _ in head:
            entry = summary[f"{workload}|{key}"].get(impl)
            if impl == BASE:
                cells.append("1.00x" if entry else "n/a")
            elif entry and "ratio" in entry:
                cells.append(f"{entry['ratio']:.2f}x")
            else:
                cells.append("n/a")
        lines.append(f"| {NAMES[impl]} | " + " | ".join(cells) + " |")
    lines += ["", "![Ratios to libuv C](results.svg)", ""]
    # Full table: medians with min–max and ratios.
    lines += ["## Figures", "", "Median (min–max over rounds), then in bold the median of the per-round ratios to "
              "libuv C (with their min–max).", ""]
    lines.append("| figure | " + " | ".join(NAMES[i] for i in impls) + " |")
    lines.append("|---" * (len(impls) + 1) + "|")
    for workload, key, label, direction in METRICS:
        row = [f"{workload}: {label}"]
        for impl in impls:
            entry = summary[f"{workload}|{key}"].get(impl)
            if not entry:
                row.append("failed")
                continue
            cell = f"{fmt(entry['median'])} ({fmt(entry['min'])}–{fmt(entry['max'])})" if entry["n"] > 1 else fmt(entry["median"])
            if "ratio" in entry:
                cell += f" **{entry['ratio']:.2f}x**"
                if len(entry["ratios"]) > 1:
                    cell += f" ({entry['ratio_min']:.2f}–{entry['ratio_max']:.2f})"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    if meta["skipped"]:
        lines += ["", "Not measured yet: " + ", ".join(f"{k} ({v})" for k, v in meta["skipped"].items()) + "."]
    if meta["failures"]:
        lines += ["", "Failed runs (left out of the figures):", ""] + [f"- {f}" for f in meta["failures"]]
    goals = [(impl, label, test, shown, summary[f"{w}|{k}"].get(impl)) for impl, w, k, label, test, shown in GOALS
             if impl in impls]
    goals = [g for g in goals if g[4] and g[3] in g[4]]
    if goals:
        lines += ["", "## Goals (issue 11, first milestone)", ""]
        for impl, label, test, shown, entry in goals:
            value = f"{entry[shown]:.2f}{'x' if shown == 'ratio' else ''}"
            lines.append(f"- {'met' if test(entry) else '**not met**'}: {NAMES[impl]}: {label} — measured {value}")
    if scaling[1]:
        lines += ["", "## Scale across cores (C sender)", "",
                  "A `UVLoopGroup` with one `UDPSocket` per loop on one port (`.reusePort`), consumers on the global "
                  "executor; the libuv C sender floods 64-byte datagrams round robin from 16 source ports. On 2 cores "
                  "the sender needs one core itself, so this shows what a second loop costs, not a 2x gain.", "",
                  "| loops | datagrams/s received | loss % |", "|---|---|---|"]
        for loops in (1, 2):
            rates = [s["rate"] for s in scaling[loops]]
            loss = statistics.median(s["loss_pct"] for s in scaling[loops])
            lines.append(f"| {loops} | {statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) | {loss:.1f} |")
    if w4:
        lines += [""] + report_w4(w4)
        while lines[-1] == "":
            lines.pop()
    return "\n".join(lines) + "\n"


def chart(meta, impls, summary):
    """A grouped bar chart of the headline ratios, hand-written SVG. Higher is better everywhere:
    latency and CPU ratios are drawn inverted (libuv C ÷ implementation)."""
    bars = [i for i in impls if i != BASE]
    groups = []
    for workload, key, label in CHART:
        direction = next(d for w, k, _, d in METRICS if w == workload and k == key)
        values = {}
        for impl in bars:
            entry = summary[f"{workload}|{key}"].get(impl)
            if entry and "ratio" in entry:
                values[impl] = entry["ratio"] if direction > 0 else 1 / entry["ratio"]
        suffix = "" if direction > 0 else " (inverted: C ÷ impl)"
        groups.append((label + suffix, values))
    width, height = 1000, 520
    left, right, top, bottom = 70, 230, 86, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = max([1.2] + [v for _, vals in groups for v in vals.values()]) * 1.12
    step = 0.25 if top_value <= 2.5 else 0.5
    y = lambda v: top + plot_h * (1 - v / top_value)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="28" font-size="18" font-weight="bold">AsyncUDP vs libuv C: both ends the same implementation</text>',
           f'<text x="{left}" y="48" font-size="12" fill="#444">Ratio to libuv C: median of the per-round ratios over '
           f'{meta["rounds"]} round(s), {escape(meta["date"])}.</text>',
           f'<text x="{left}" y="64" font-size="12" fill="#444">Higher is better everywhere: latency and CPU are drawn '
           'inverted (libuv C ÷ implementation).</text>']
    tick = 0.0
    while tick <= top_value + 1e-9:
        ty = y(tick)
        out.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{left - 8}" y="{ty + 4:.1f}" font-size="11" text-anchor="end" fill="#444">{tick:.2f}x</text>')
        tick += step
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>')
    # The 1.0x line under the bars and their labels, so that a label near 1.0 stays readable.
    ref = y(1.0)
    out.append(f'<line x1="{left}" y1="{ref:.1f}" x2="{left + plot_w}" y2="{ref:.1f}" stroke="#000" stroke-width="1.5" '
               'stroke-dasharray="6,4"/>')
    group_w = plot_w / max(len(groups), 1)
    bar_w = min(28, (group_w - 24) / max(len(bars), 1))
    for g, (label, values) in enumerate(groups):
        gx = left + g * group_w
        start = gx + (group_w - bar_w * len(bars)) / 2
        for b, impl in enumerate(bars):
            bx = start + b * bar_w
            if impl not in values:
                out.append(f'<text x="{bx + bar_w / 2:.1f}" y="{top + plot_h - 4}" font-size="9" text-anchor="middle" fill="#999">n/a</text>')
                continue
            v = values[impl]
            out.append(f'<rect x="{bx + 1:.1f}" y="{y(v):.1f}" width="{bar_w - 2:.1f}" height="{top + plot_h - y(v):.1f}" '
                       f'fill="{COLORS.get(impl, "#bcbd22")}"><title>{escape(NAMES[impl])}: {v:.2f}x</title></rect>')
            out.append(f'<text x="{bx + bar_w / 2:.1f}" y="{y(v) - 4:.1f}" font-size="9" text-anchor="middle" '
                       f'fill="#222" stroke="white" stroke-width="3" paint-order="stroke">{v:.2f}</text>')
        words = label.split(" (")
        out.append(f'<text x="{gx + group_w / 2:.1f}" y="{top + plot_h + 20}" font-size="12" text-anchor="middle" '
                   f'font-weight="bold">{escape(words[0])}</text>')
        if len(words) > 1:
            out.append(f'<text x="{gx + group_w / 2:.1f}" y="{top + plot_h + 36}" font-size="11" text-anchor="middle" '
                       f'fill="#444">({escape(words[1])}</text>')
    lx, ly = left + plot_w + 20, top + 10
    out.append(f'<text x="{lx}" y="{ly}" font-size="12" font-weight="bold">Implementation</text>')
    for b, impl in enumerate(bars):
        yy = ly + 14 + b * 22
        out.append(f'<rect x="{lx}" y="{yy}" width="14" height="14" fill="{COLORS.get(impl, "#bcbd22")}"/>')
        out.append(f'<text x="{lx + 20}" y="{yy + 11}" font-size="11">{escape(NAMES[impl])}</text>')
    yy = ly + 14 + len(bars) * 22 + 6
    out.append(f'<line x1="{lx}" y1="{yy + 7}" x2="{lx + 14}" y2="{yy + 7}" stroke="#000" stroke-width="1.5" stroke-dasharray="4,3"/>')
    out.append(f'<text x="{lx + 20}" y="{yy + 11}" font-size="11">libuv C (reference)</text>')
    if meta["skipped"]:
        out.append(f'<text x="{lx}" y="{yy + 34}" font-size="10" fill="#666">Not measured yet: {escape(", ".join(meta["skipped"]))}</text>')
    out.append('</svg>')
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
