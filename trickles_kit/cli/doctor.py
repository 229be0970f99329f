"""`trickles doctor`: print net/doctor.py's checks, exit 0 when the core can run."""

from __future__ import annotations

import argparse
import json

from trickles_kit.net.doctor import core_ready, format_checks, run_doctor, summary


def add_doctor_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = subparsers.add_parser(
        "doctor", help="check privileges, kernel features, tools and Python packages",
        description="Check what this machine allows (raw sockets, namespaces, qdiscs, "
                    "firewalls, capture tools, lab packages) and say how to get what is "
                    "missing. Exit code 0 if the core works with raw sockets or UDP.",
    )
    d.add_argument("--json", action="store_true", help="print the checks as JSON")
    d.set_defaults(func=cmd_doctor)
    return d


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_doctor()
    ready, _ = core_ready(checks)
    line = summary(checks)
    if getattr(args, "json", False):
        build = next(c.detail for c in checks if c.name == "build")
        doc = {"ok": ready, "summary": line, "build": build,
               "checks": [c.as_dict() for c in checks]}
        print(json.dumps(doc, indent=2))
    else:
        print(format_checks(checks))
        print(f"trickles doctor: {line}")
    return 0 if ready else 1
