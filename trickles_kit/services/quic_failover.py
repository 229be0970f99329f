"""The failover demo for QUIC: what happens to an HTTP/3 connection when its replica dies.

The same replica set as `scenarios.run_failover` (client, router, two replicas holding the
service address, the 10 ms health check that moves the route to the standby, a bottleneck so
the transfer lasts), with `bench.quic_server` on each replica and `bench.quic_client agent` as
the client. When the active replica is SIGKILLed mid-transfer:

* nothing tells the client: its packets now reach the standby, whose QUIC server drops
  short-header packets for connection IDs it never issued (no RST, no stateless reset: aioquic
  keeps no reset key across replicas), and the dead replica's kernel is off the path. The
  connection **stalls**, then **fails** when something gives up on the silence;
* `watchdog`: the application gives up after `io_timeout` s without a body byte — the same 3 s
  as the TCP agent's socket timeout — then reconnects (a new handshake with the standby) and
  asks for the rest with `Range`, the path TCP takes after its reset;
* `idle_timeout`: no watchdog; QUIC's own idle timeout ends the connection (aioquic's default
  is 60 s; here `idle_timeout` s), then the same reconnect and Range.

Times are the client's (wall clock, shared by every namespace): failure noticed after the kill,
recovered (first byte of the Range response) after the kill, and the stall from the last byte
before the kill to the first after it. The standby's own counters (connections, requests) show
the new handshake.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from trickles_kit.bench.meta import CHILD_CWD
from trickles_kit.services.replicas import SERVICE, ServiceBed
from trickles_kit.services.scenarios import (  # the same agent protocol (JSON lines)
    follow_killing,
    run_failover,
)

QUIC_PORT = 8443
VARIANTS = {"watchdog": {"io_timeout": 3.0, "idle_timeout": 30.0},
            "idle_timeout": {"io_timeout": 0.0, "idle_timeout": 10.0}}


def _r(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(x, n)


def _start(bed: ServiceBed, timeout: float = 20.0) -> None:
    """A QUIC server on every replica (its process is what the health check polls)."""
    for r in bed.replicas:
        r.proc = bed.topo.popen(r.name, [sys.executable, "-m", "trickles_kit.bench.quic_server",
                                         "--bind", SERVICE, "--port", str(QUIC_PORT)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                cwd=CHILD_CWD)
    end = time.monotonic() + timeout
    for r in bed.replicas:
        assert r.proc is not None and r.proc.stdout is not None
        line = r.proc.stdout.readline()
        if "serving" not in line or time.monotonic() > end:
            raise RuntimeError(f"quic_server on {r.name} did not start: {line!r}")


def _counters(bed: ServiceBed, name: str) -> dict | None:
    """The replica's final JSON counters (SIGTERM), None if it is dead."""
    p = bed.replica(name).proc
    if p is None or p.poll() is not None:
        return None
    p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        return None
    for line in out.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    return None


def run_quic_failover(variant: str = "watchdog", size: int = 3_000_000,
                      rate_mbit: float = 40.0, kill_at: float = 0.4, verbose: bool = False,
                      timeout: float = 60.0) -> dict:
    """SIGKILL replica s1 once `kill_at` of the body arrived; how the QUIC client gets the rest."""
    v = VARIANTS[variant]
    with ServiceBed("failover", "tcp", rate_mbit=rate_mbit, verbose=verbose,
                    tag=f"quicf{int(time.time()) % 100000}") as bed:
        _start(bed)
        hc = bed.start_health_check()
        p = bed.topo.popen("c", [sys.executable, "-m", "trickles_kit.bench.quic_client",
                                 "agent", SERVICE, "--port", str(QUIC_PORT), "--size",
                                 str(size), "--mark", str(int(size * kill_at)), "--timeout",
                                 str(timeout), "--io-timeout", str(v["io_timeout"]),
                                 "--idle-timeout", str(v["idle_timeout"])],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=CHILD_CWD)
        res, killed = follow_killing(bed, p, timeout + 15)
        standby = _counters(bed, "s2")
    t_kill = killed.get("t")
    f = res["fails"][0] if res.get("fails") else None
    return {
        "scenario": "failover", "kind": "quic", "variant": variant, **v,
        "size": size, "rate_mbit": rate_mbit, "kill_at_bytes": killed.get("bytes"),
        "byte_exact": res.get("byte_exact"), "status": res.get("status"),
        "seconds": _r(res["t_end"] - res["t_start"]),
        "health_check": {"route_moved_s": _r(hc.switched_at - t_kill
                                             if hc.switched_at and t_kill else None),
                         "new_active": hc.new_active},
        "what_happened": f["error"] if f else "no failure seen",
        "detail": f["detail"] if f else None,
        "failures": len(res.get("fails", [])),
        "reconnect_attempts": f["attempts"] if f else 0,
        "failure_noticed_s": _r(f["t"] - t_kill) if f and t_kill else None,
        "recover_s": _r(f["resumed_t"] - t_kill) if f and f["resumed_t"] and t_kill else None,
        "reconnect_to_first_byte_s": _r(f["resumed_t"] - f["t"])
        if f and f["resumed_t"] else None,
        "stall_from_last_byte_s": _r(f["resumed_t"] - f["last_byte_t"])
        if f and f["resumed_t"] and f["last_byte_t"] else None,
        "standby_counters": standby,
    }


def compare(quick: bool = False, verbose: bool = False) -> dict:
    """QUIC's failover variants beside Trickles' and TCP's, in the same replica set; the
    summary `trickles bench quic` records (quick: the watchdog variant only)."""
    variants = ["watchdog"] if quick else list(VARIANTS)
    out: dict = {"quic": {}, "rate_mbit": 40.0, "size": 3_000_000,
                 "method": (__doc__ or "").split("\n\n", 1)[1].strip()}
    for v in variants:
        try:
            out["quic"][v] = run_quic_failover(v, verbose=verbose)
        except (RuntimeError, OSError, ValueError) as e:
            out["quic"][v] = {"error": f"{type(e).__name__}: {e}"}
    for kind in ("trickles", "tcp"):
        try:
            r = run_failover(kind, verbose=verbose)
        except (RuntimeError, OSError, ValueError) as e:
            out[kind] = {"error": f"{type(e).__name__}: {e}"}
            continue
        keep = ("byte_exact", "stall_s", "seconds", "handshakes", "health_check", "tcp",
                "timeout_fired", "rto_s", "bound_s", "stall_within_bound", "no_new_handshake")
        out[kind] = {k: r[k] for k in keep if k in r}
    q = out["quic"].get("watchdog", {})
    tcp = out.get("tcp", {}).get("tcp", {})
    out["summary"] = {
        "trickles_stall_s": out.get("trickles", {}).get("stall_s"),
        "tcp_recover_s": tcp.get("recover_s"),
        "tcp_stall_from_last_byte_s": tcp.get("stall_from_last_byte_s"),
        "quic_watchdog_recover_s": q.get("recover_s"),
        "quic_watchdog_stall_from_last_byte_s": q.get("stall_from_last_byte_s"),
        "quic_idle_timeout_recover_s": out["quic"].get("idle_timeout", {}).get("recover_s"),
    }
    return out
