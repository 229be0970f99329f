"""`trickles services demo failover|balance|load|anycast|parallel [--tcp]`, `figure` and `table`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trickles_kit.cli.pathargs import add_path_arguments, path_problem
from trickles_kit.net.topology import TopologyError
from trickles_kit.services import report
from trickles_kit.services.cgroup import CgroupError
from trickles_kit.services.scenarios import SCENARIOS, AgentError

CHOICES = ("failover", "balance", "load", "anycast", "parallel")
DEFAULT_OUT = "reports/services"  # a user's runs; the committed ones change only with --record


def add_services_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "services", help="failover, per-packet balancing and anycast across replicas (root)",
        description="Replicas sharing the master secret in network namespaces behind a router "
                    "that only routes (policy routes, iptables statistic, route withdrawal).")
    ss = s.add_subparsers(dest="services_command", metavar="SUBCOMMAND")
    d = ss.add_parser("demo", help="run one scenario, print a summary, write JSON + figure")
    d.add_argument("scenario", choices=CHOICES,
                   help="failover: SIGKILL the active replica mid-transfer; balance: one "
                        "connection round-robined per packet; load: 8 clients, CPU-capped "
                        "replicas, 1 vs 2; anycast: the near site withdraws mid-transfer; "
                        "parallel: 8 pipelined GETs on one connection, packets "
                        "round-robined over 2 replicas")
    d.add_argument("--tcp", action="store_true", help="Linux TCP HTTP replicas instead")
    d.add_argument("--size", type=int, help="bytes per transfer (default: per scenario)")
    d.add_argument("--clients", type=int, default=8, help="load: concurrent clients")
    d.add_argument("--cpu", type=float, default=0.2,
                   help="load: CPU quota per replica, in CPUs (default 0.2)")
    d.add_argument("--repeats", type=int, default=3,
                   help="load: 1-vs-2-replica pairs to run; the median pair is reported "
                        "(default 3)")
    add_path_arguments(d, "client <-> replicas: MS/2 each way by the NFQUEUE delay line in "
                          "the router")
    d.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                   help="results directory (default %(default)s; git-ignored)")
    d.add_argument("--record", action="store_true",
                   help="refresh the committed result in benchmarks/results/ and regenerate "
                        "the README table from it (instead of --out)")
    d.add_argument("--no-save", action="store_true", help="print only, write nothing")
    d.add_argument("--json", action="store_true", help="print the whole result as JSON")
    d.add_argument("-v", "--verbose", action="store_true", help="print every system command")
    d.set_defaults(func=cmd_demo)
    f = ss.add_parser("figure", help="draw the figures of the committed results (HTML)",
                      description="One HTML figure per benchmarks/results/services_*.json, "
                                  "drawn from the JSON (the results carry none).")
    f.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                   help="directory to write them to (default %(default)s; git-ignored)")
    f.set_defaults(func=cmd_figure)
    t = ss.add_parser("table", help="regenerate the README table from the result JSON files")
    t.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    t.set_defaults(func=cmd_table)
    s.set_defaults(func=lambda a: (s.print_help(), 2)[1])


def cmd_demo(args: argparse.Namespace) -> int:
    import os


    if args.record and (args.no_save or args.out != Path(DEFAULT_OUT)):
        print("trickles services demo: --record writes benchmarks/results/: no --out or "
              "--no-save with it", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("trickles services demo: needs root (namespaces, routes, raw sockets): run it "
              "with sudo", file=sys.stderr)
        return 2
    kind = "tcp" if args.tcp else "trickles"
    if args.scenario == "parallel" and args.tcp:
        print("trickles services demo parallel: Trickles only (parallel requests in reserved "
              "slices are a Trickles optimization)", file=sys.stderr)
        return 2
    if args.scenario == "load" and args.tcp:
        print("trickles services demo load: Trickles only (per-packet balancing breaks one TCP "
              "connection: see `demo balance --tcp`)", file=sys.stderr)
        return 2
    kw: dict = {"kind": kind, "verbose": args.verbose}
    if args.rtt or args.jitter:
        msg = path_problem(args.rtt, args.jitter)
        if msg:
            print(f"trickles services demo: {msg}", file=sys.stderr)
            return 2
        kw.update(rtt_ms=args.rtt, jitter_ms=args.jitter)
    if args.size is not None:
        if args.size <= 0:
            print("trickles services demo: --size must be positive", file=sys.stderr)
            return 2
        kw["size"] = args.size
    if args.scenario == "load":
        if args.repeats < 1:
            print("trickles services demo: --repeats must be at least 1", file=sys.stderr)
            return 2
        kw.update(clients=args.clients, cpu_fraction=args.cpu, repeats=args.repeats)
    try:
        res = SCENARIOS[args.scenario](**kw)
    except (TopologyError, CgroupError, AgentError, RuntimeError, ValueError) as e:
        print(f"trickles services demo: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(report.summary(res))
    if not args.no_save:
        argv = ["-m", "trickles_kit.cli", "services", "demo", args.scenario]
        argv += ["--tcp"] if args.tcp else []
        argv += ["--size", str(args.size)] if args.size else []
        argv += [f"--rtt={args.rtt:g}"] if args.rtt else []
        argv += [f"--jitter={args.jitter:g}"] if args.jitter else []
        if args.scenario == "load":
            argv += ["--repeats", str(args.repeats)]
        argv += ["--record"] if args.record else []
        # the committed results carry no figure: `trickles services figure` draws it from them
        path = report.save(res, argv, report.RESULTS if args.record else args.out,
                           figure=not args.record)
        print(f"wrote {os.path.relpath(path)}" + ("" if args.record else " (+ .html figure)"))
        if args.record:
            changed = report.update_readme(report.README, report.RESULTS)
            print("README services table " + ("updated" if changed else "unchanged"))
    return 0 if res["byte_exact"] else 1


def cmd_figure(args: argparse.Namespace) -> int:
    written = report.write_figures(args.out)
    if not written:
        print("trickles services figure: nothing drawn (no results, or plotly is missing)",
              file=sys.stderr)
        return 1
    for p in written:
        print(f"wrote {p}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    if args.check:
        ok = report.check_readme()
        print("README services table is current" if ok else
              "README services table is stale: trickles services table")
        return 0 if ok else 1
    changed = report.update_readme()
    print("README services table updated" if changed else "README services table unchanged")
    return 0
