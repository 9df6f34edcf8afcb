#!/usr/bin/env python3
"""tagcache benchmark: the module's commands against the client patterns they
replace, and against plain Redis commands as the upper limit.

    python3 bench/bench.py                     # full run, writes bench/results.json
    python3 bench/bench.py --quick             # short smoke run
    python3 bench/bench.py --only purge,vget   # some scenarios only

The scenarios (bench/scenarios/) run against two servers started here
(loopback, no persistence): one with the module loaded and one without it,
where the baselines run as users run them today; some start their own servers
(memory: a fresh one per measurement; tax: every server binary found;
callgrind: servers under valgrind). Servers are pinned to CPU 0 and load
generators to CPU 1 when the machine has two CPUs and `taskset`. Each figure
is the median over --rounds rounds (at least 5), variants interleaved inside
every round. The run ends with a summary of every goal and its verdict.

A module command that the loaded module does not have (unknown command) makes
its rows "unavailable"; the other rows still run. See BENCHMARKS.md.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from report import (BenchError, Result, log, render_markdown, render_summary_markdown,  # noqa: E402
                    render_summary_text, render_text)
from runner import INITIAL_CPUS, LOAD_CPU, SERVER_CPU, CpuWatch, Ctx, machine_info  # noqa: E402
from scenarios import SCENARIOS  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="scenarios: " + ", ".join(SCENARIOS))
    p.add_argument("--server", default="redis-server", help="server binary (default: redis-server on PATH)")
    p.add_argument("--module", default="target/release/libredis_tagcache.so",
                   help="module to load (default: target/release/libredis_tagcache.so)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per figure, at least 5 (default 5)")
    p.add_argument("--quick", action="store_true", help="short smoke run: short windows, smaller sizes")
    p.add_argument("--only", default=None,
                   help="comma-separated scenarios to run (%s)" % ", ".join(SCENARIOS))
    p.add_argument("--output", default=None,
                   help="results file (default bench/results.json; bench/results-quick.json with --quick)")
    p.add_argument("--markdown", default=None, help="also write the tables as Markdown to this file")
    p.add_argument("--report", default=None, metavar="RESULTS_JSON",
                   help="run nothing: print the tables of an earlier results file (with --markdown, "
                        "write them too)")
    a = p.parse_args(argv)
    if a.rounds < 5:
        p.error("--rounds must be at least 5")
    if a.only:
        names = [s.strip() for s in a.only.split(",") if s.strip()]
        bad = [s for s in names if s not in SCENARIOS]
        if bad:
            p.error("unknown scenario(s): %s; known: %s" % (", ".join(bad), ", ".join(SCENARIOS)))
        a.only = names
    a.output_path = a.output or os.path.join(HERE, "results-quick.json" if a.quick else "results.json")
    return a


def _on_signal(signum, frame):
    raise SystemExit("stopped by signal %d" % signum)


def _headline(report):
    m = report.get("machine", {})
    return "tagcache benchmark — %s, %s CPUs (%s), Redis %s, %s rounds%s%s" % (
        m.get("date"), m.get("nproc"), m.get("cpu_model"), m.get("server_version"), report.get("rounds"),
        ", quick" if report.get("quick") else "",
        ", %.0f s" % report["seconds"] if report.get("seconds") else "")


def _print_all(report, results, markdown):
    print("\n" + "=" * 78)
    print(_headline(report))
    for res in results:
        print(render_text(res))
    print(render_summary_text(results))
    if markdown:
        with open(markdown, "w") as f:
            f.write(render_summary_markdown(results) + "\n")
            for res in results:
                f.write(render_markdown(res) + "\n")


def print_report(path, markdown=None):
    with open(path) as f:
        data = json.load(f)
    _print_all(data, [Result.from_json(s) for s in data.get("scenarios", [])], markdown)
    return 0


def _write_json(path, report):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(tmp, path)


def run_scenario(ctx, name):
    """One scenario; an exception becomes the scenario's error, not the run's
    end. A scenario returns one Result, or a list of them (one table each).
    Returns ([Result], facts)."""
    fn, description = SCENARIOS[name]
    t0 = time.monotonic()
    log("scenario %s" % name)
    watch = CpuWatch(ctx)
    try:
        ctx.on("main")
        out = fn(ctx)
        results = list(out) if isinstance(out, (list, tuple)) else [out]
    except Exception as e:  # noqa: BLE001 - one scenario failing must not stop the rest
        res = Result(name, description, [("value", "value", "")])
        res.error = "%s: %s" % (type(e).__name__, e)
        log(traceback.format_exc())
        try:
            ctx.on("main")
            ctx.ensure_server(res, name)
        except BenchError as e2:
            res.notes.append("server restart failed: %s" % e2)
        results = [res]
    other, steal = watch.foreign()
    for res in results:
        if other is not None and other > 10:
            res.note("other processes on this machine used %.0f%% of a CPU during this scenario: "
                     "figures are noisier than on a quiet machine" % other)
        if steal is not None and steal > 5:
            res.note("the hypervisor stole %.0f%% of a CPU during this scenario" % steal)
    return results, {"seconds": round(time.monotonic() - t0, 1), "other_processes_cpu_pct": other,
                     "steal_cpu_pct": steal}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.report:
        return print_report(args.report, args.markdown)
    # Stop cleanly (servers stopped, temp dir removed) on SIGTERM, and on
    # SIGINT even when started in the background (where it is ignored).
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server_bin = shutil.which(args.server) or args.server
    if not os.path.exists(server_bin):
        sys.exit("server not found: %s" % args.server)
    if not shutil.which("redis-benchmark"):
        sys.exit("redis-benchmark not found on PATH")
    pin = bool(shutil.which("taskset")) and INITIAL_CPUS is not None \
        and {SERVER_CPU, LOAD_CPU} <= set(INITIAL_CPUS)
    if pin:
        os.sched_setaffinity(0, {LOAD_CPU})
    workdir = tempfile.mkdtemp(prefix="tagcache-bench-")
    module_copy = module_note = None
    if args.module and os.path.exists(args.module):
        # A private copy: a rebuild never overwrites a file a server has mapped.
        module_copy = os.path.join(workdir, "libredis_tagcache.so")
        shutil.copy2(args.module, module_copy)
    else:
        module_note = "module file not found: %s (module scenarios unavailable)" % args.module
        log(module_note)
    ctx = Ctx(args, workdir, pin, server_bin, module_copy)
    results = []
    report = {"command": " ".join(["python3", os.path.relpath(os.path.abspath(__file__))] + argv),
              "quick": args.quick, "rounds": args.rounds}
    t_run = time.monotonic()
    try:
        ctx.start_main()
        report["machine"] = machine_info(ctx)
        if module_note:
            report["machine"]["module_load_error"] = module_note
        log("server %s on port %d%s; module: %s" % (
            report["machine"]["server_version"], ctx.port, " (pinned)" if pin else "",
            "loaded" if ctx.has_module() else (ctx.module_load_error or module_note or "none")))
        report["scenarios"] = []
        for name in args.only or list(SCENARIOS):
            part, facts = run_scenario(ctx, name)
            for res in part:
                results.append(res)
                report["scenarios"].append(dict(res.to_json(), **facts))
                print(render_text(res), flush=True)
            report["crashes"] = ctx.crashes
            report["seconds"] = round(time.monotonic() - t_run, 1)
            _write_json(args.output_path, report)
    finally:
        ctx.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    _print_all(report, results, args.markdown)
    print("\nresults: %s" % os.path.relpath(args.output_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
