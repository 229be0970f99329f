"""`trickles serve --workers N`: the same server as `trickles serve`, in N processes.

The supervisor (`net.workers.WorkerGroup`) opens the sockets and forks; each worker builds its own
`WebServer`, `ServerEngine` and `ServerLoop` here from the shared secret and options. `--events`
and `--pcap` name one file per worker (`ev.jsonl` -> `ev.w0.jsonl`, `ev.w1.jsonl`, ...). At the
end each worker that stopped prints its counters and the last line sums them (the line scripts
parse, as with one process); a killed worker's counters are lost.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path

from trickles_kit.cli.wire import (
    _fail,
    listen_desc,
    load_secret,
    serve_app,
    serve_config,
    shutdown_line,
    syn_options,
)
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.net.faults import LossyTransport
from trickles_kit.net.ip import PROTO_TCP, aton
from trickles_kit.net.pcap import PcapWriter
from trickles_kit.net.privileges import PrivilegeError
from trickles_kit.net.rst import RstRuleError, suppress_rsts
from trickles_kit.net.runner import EventWriter, ServerLoop, SynBucket
from trickles_kit.net.transport import Transport
from trickles_kit.net.workers import WorkerGroup, total


def per_worker(path: str, k: int) -> str:
    """`ev.jsonl` -> `ev.w0.jsonl`: one log per worker (they must not share a file)."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.w{k}{p.suffix}"))


def _builder(args: argparse.Namespace, secret: bytes, cfg: ServerConfig
             ) -> Callable[[int, Transport], tuple[ServerLoop, Callable[[], Mapping[str, int]]]]:
    """What each worker runs after the fork: its own app, engine and loop on its socket."""

    def build(k: int, tr: Transport) -> tuple[ServerLoop, Callable[[], Mapping[str, int]]]:
        ew = EventWriter(per_worker(args.events, k)) if args.events else None
        pw = PcapWriter(per_worker(args.pcap, k)) if args.pcap else None
        web = serve_app(args)
        engine = ServerEngine(secret, web, aton(args.addr), args.port, cfg, ew)
        web.attach(engine)
        if args.drop or args.drop_at:
            lossy = LossyTransport(tr, args.drop, args.drop_seed, drop_at=args.drop_at,
                                   port=args.port)
            lossy.on_drop = lambda _seg, _ip: engine.note_drop("injected", time.time())
            tr = lossy  # type: ignore[assignment]
        loop = ServerLoop(engine, tr, pw, delay=args.delay,
                          priority=not args.no_syn_priority, **syn_options(args))

        def finish() -> Mapping[str, int]:
            for f in (ew, pw):
                if f is not None:
                    f.close()
            if engine.last_error:
                print(f"trickles serve: worker {k}: {engine.counters['handler_error']} handler "
                      f"error(s); the last one:\n{engine.last_error}", file=sys.stderr)
            return engine.counters

        return loop, finish

    return build


def _check(args: argparse.Namespace) -> None:
    """The options a worker would reject, checked once before any fork."""
    if args.workers < 1:
        raise ValueError("--workers must be >= 1")
    if not 0.0 <= args.delay <= 10.0:
        raise ValueError(f"delay must be in [0, 10] seconds, got {args.delay}")
    syn = syn_options(args)
    SynBucket(syn.get("syn_rate", 1.0), int(syn.get("syn_burst", 1)), syn.get("syn_share", 0.0))
    if args.drop or args.drop_at:
        LossyTransport(None, args.drop, args.drop_seed,  # type: ignore[arg-type]
                       drop_at=args.drop_at, port=args.port)


def cmd_serve_workers(args: argparse.Namespace) -> int:
    """Run `trickles serve` as N workers until SIGINT/SIGTERM or --duration."""
    try:
        _check(args)
        secret = load_secret(args.secret_file)
        serve_app(args)  # a bad --root fails here, once
        cfg = serve_config(args)
        group = WorkerGroup(args.workers, args.transport, args.addr, args.port, args.ip_proto,
                            pin=not args.no_pin)
    except (PrivilegeError, OSError, ValueError) as e:
        return _fail("serve", e)
    where = listen_desc(args, group.port)
    stack = ExitStack()
    try:
        if args.transport == "raw" and args.ip_proto == PROTO_TCP:
            stack.enter_context(suppress_rsts(args.port, "server"))
        pids = group.start(_builder(args, secret, cfg), args.duration)
        print(f"trickles serve: {Path(args.root).resolve()} on {where}, {args.workers} workers "
              f"(pids {' '.join(map(str, pids))}) sharded by Trickles source port", flush=True)
        exits = group.wait(lambda msg: print(f"trickles serve: {msg}", file=sys.stderr,
                                             flush=True))
    except (RstRuleError, RuntimeError) as e:
        return _fail("serve", e)
    finally:
        group.close()
        stack.close()
    for e in exits:
        if e.counters is None:
            print(f"trickles serve: worker {e.index} (pid {e.pid}) {e.how}: no counters",
                  flush=True)
        else:
            line = shutdown_line(e.counters).removeprefix("trickles serve: ")
            print(f"trickles serve: worker {e.index} (pid {e.pid}) {line}", flush=True)
    print(shutdown_line(total(exits)), flush=True)
    return 0 if any(e.counters is not None for e in exits) else 1
