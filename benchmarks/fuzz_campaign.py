#!/usr/bin/env python3
"""Fuzzing campaign: every decoder, the server engine, a key-holding engine harness, forgery.

A self-contained mutation fuzzer (no atheris: CI installs only the project's dev extras, and a
libFuzzer driver that owns the process does not fit one JSON over many harnesses). Feedback is
(a) the outcome of each execution (decode reason, drop reason, packets out) and (b) line coverage
of trickles_kit/{core,wire,apps}, measured with sys.settrace on one execution in `trace_every`
(an input that reaches a new line or a new outcome joins the corpus).

Harnesses
  decode_segment, decode_segment_addr, decode_request, decode_response, decode_chunks,
  decode_continuation   raw bytes; only DecodeError may escape; a decoded value re-encodes to
                        an equal value (round trip).
  engine_raw            byte mutations of real captured segments (SYN and requests), checksum
                        fixed 95% of the time, fed to ServerEngine.receive.
  engine_keyed          HOLDS THE KEY: structured mutations of captured requests (SACK blocks
                        with correct nonce summaries, ranges, ucont re-sealed with the handler's
                        AEAD key, app bytes, request type, client-owned fields and the
                        server-owned fields, re-sealed with mac_with(keys.mac_hasher(epoch), ...)),
                        restricted to continuations the server can seal (`sealable`).
  engine_keyed_any      the same without that restriction: what happens to continuations the
                        server never seals (needs the key); reported apart, never a test failure.

Invariants (a violation is a crash): nothing escapes receive(); no handler_error and no
drop.internal.*; each call returns within 50 ms (confirmed on a fresh engine; a 1 s watchdog
interrupts endless calls); every output segment decodes (checksum included) and its FULL
continuation verifies and is sealable; ports, siblings and positions are consistent; no packet
carries more than the MSS of data; packets per request within the bound derived from
core/plan.py (`packet_bound`).

Forgery: random mutations of valid requests WITHOUT re-sealing; none may be accepted with altered
MAC-covered continuation bytes (offsets 0..5 and 18..74).

    .venv/bin/python benchmarks/fuzz_campaign.py --executions 1000000 --forgery 1000000
    .venv/bin/python benchmarks/fuzz_campaign.py --seconds 60 --harness engine_keyed
    .venv/bin/python benchmarks/fuzz_campaign.py --forgery 1000000 --executions 0
    .venv/bin/python benchmarks/fuzz_campaign.py --quick   # every harness briefly: a smoke run
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import random
import re
import shlex
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from inspect import CO_NEWLOCALS
from pathlib import Path
from types import CodeType

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
for _p in (str(REPO), str(TESTS)):
    if _p not in sys.path:  # run as a plain script; reuse the security tests' helpers
        sys.path.insert(0, _p)

from helpers_security import (  # noqa: E402
    CLIENT_IP,
    CLIENT_PORT,
    CONT_OFFSET,
    MAC_COVERED,
    SERVER_IP,
    SERVER_PORT,
    fix_checksum,
    fresh_replay,
    make_server,
    run_handshake,
)

from trickles_kit.apps.generated import _UC  # noqa: E402
from trickles_kit.bench.meta import add_output_args, write_result  # noqa: E402
from trickles_kit.core import plan as pl  # noqa: E402
from trickles_kit.core.cc import MAX_CWND  # noqa: E402
from trickles_kit.core.seal import UcontBox, mac_with, pseudo_header  # noqa: E402
from trickles_kit.core.server import ServerEngine  # noqa: E402
from trickles_kit.wire.continuation import (  # noqa: E402
    BOOTSTRAP,
    FULL1,
    FULL2,
    FULL_LEN,
    MAC_OFFSET,
    NORMAL,
    RECOVERY,
    Continuation,
    decode_continuation,
    pack_body,
)
from trickles_kit.wire.delta import unpack_request  # noqa: E402
from trickles_kit.wire.errors import DecodeError  # noqa: E402
from trickles_kit.wire.messages import (  # noqa: E402
    REQ_FIN,
    REQ_NORMAL,
    REQ_SLOWSTART,
    REQ_SYN,
    DataChunk,
    FinHint,
    SkipChunk,
    decode_chunks,
    decode_request,
    decode_response,
    encode_chunks,
    encode_data_chunk,
)
from trickles_kit.wire.segment import (  # noqa: E402
    ACK,
    FIN,
    SYN,
    checksum,
    decode_segment,
    encode_segment,
)

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1
CALL_LIMIT_S = 0.050  # a call slower than this (confirmed 3 times on a fresh engine) is a hang
WATCHDOG_S = 1.0  # a call still running after this is interrupted (endless loop)
HANDSHAKE_MAX_CWND = 64  # ServerConfig.initial_cwnd is validated to 1..64
SEALED_MAX_START = max(HANDSHAKE_MAX_CWND, MAX_CWND // 2, pl.SLOWSTART_CWND)
WRAP_LIMIT = M32 - (1 << 20)  # packet numbers the sealable domain stays below (see sealable)
DECODERS = ("decode_segment", "decode_segment_addr", "decode_request", "decode_response",
            "decode_chunks", "decode_continuation")
ENGINES = ("engine_raw", "engine_keyed", "engine_keyed_any")
HARNESSES = DECODERS + ENGINES
PSEUDO = pseudo_header(CLIENT_IP, CLIENT_PORT, SERVER_IP, SERVER_PORT)
COVERED = tuple(MAC_COVERED)  # continuation offsets under the MAC: 0..5 and 18..74

# Crashes the fuzzer finds that are understood, reported, and not yet fixed. Each has a strict
# xfail reproduction in tests/wire/test_fuzz.py: when the bug is fixed that test XPASSes (fails) and
# the entry must be deleted here, so a fixed bug can never come back unnoticed.
KNOWN_FINDINGS: dict[str, dict[str, str]] = {
    # "finhint-u32" (a GEN stream of 2**32 bytes put FINHINT 2**32 in a u32 field) was found by
    # this campaign and fixed: Generated.max_size is now 2**32 - 1 (test_fuzz keeps a regression)
}


def known_finding(signature: str) -> str | None:
    for name, f in KNOWN_FINDINGS.items():
        if signature.startswith(f["match"]):
            return name
    return None


# ------------------------------------------------------------------------------- invariants
def sealable(c: Continuation, wrap_limit: int = WRAP_LIMIT) -> bool:
    """True for the FULL continuations ServerEngine can seal (derived from core/server.py+plan.py).

    * handshake (_syn): seq = TCPBase - 1, 1 <= startCwnd = initial_cwnd <= 64 <= ssthresh is
      not required but ssthresh >= startCwnd is (ServerConfig validation);
    * normal/split: the epoch fields are copied; pkt = k + cwnd(k-1) + i >= TCPBase;
    * slowstart: TCPBase = right + 1, startCwnd = 2, ssthresh = max(cwnd // 2, 2) >= 2;
    * bootstrap: startCwnd = ssthresh = max(cwnd // 2, 1) <= MAX_CWND // 2, pkt >= TCPBase.
    So: 1 <= startCwnd <= ssthresh, startCwnd <= 4095 (<= 64 when seq = TCPBase - 1),
    TCPBase >= 1, seq >= TCPBase - 1. Packet numbers stay below 2**32 - 2**20 (a connection of
    more than 4 billion packets: the wrap is explored by engine_keyed_any, not here).
    """
    if c.type not in (FULL1, FULL2) or c.state > BOOTSTRAP:
        return False
    if not 1 <= c.start_cwnd <= c.ssthresh or c.start_cwnd > SEALED_MAX_START:
        return False
    if c.tcp_base < 1 or c.seq < c.tcp_base - 1:
        return False
    if c.seq == c.tcp_base - 1 and c.start_cwnd > HANDSHAKE_MAX_CWND:
        return False
    return c.seq <= wrap_limit and c.tcp_base <= wrap_limit


def packet_bound(rtype: int, cont: Continuation | None, blocks: list[tuple[int, int]],
                 max_gap: int) -> tuple[int, str]:
    """Most packets one accepted request can produce, derived from core/plan.py.

    Same order as plan_request: SYN and FIN answer one packet; SLOWSTART emits SLOWSTART_CWND;
    a RECOVERY continuation terminates; the handshake continuation (seq = TCPBase - 1) opens the
    initial window (startCwnd, <= 64 for sealable ones); a contiguous proof is the normal step,
    k + cwnd(k-1) .. k + cwnd(k), and cwnd grows by at most 1 per ack (slow start +1, congestion
    avoidance holds w for w acks, MAX_CWND cap), so <= 2 (the contract's 5 is looser); otherwise
    the recovery plan: one bootstrap per packet of the hole before k inside the bootstrap range
    (<= max_gap) + the bootstrap of k itself, or the retransmission of the first loss + the
    bootstraps of its hole's packets from the bootstrap range on (the hole starts before that
    range: <= max_gap in all).
    """
    if rtype in (REQ_SYN, REQ_FIN):
        return 1, "syn/fin"
    assert cont is not None
    if rtype == REQ_SLOWSTART:
        return pl.SLOWSTART_CWND, "slowstart"
    if cont.state == RECOVERY:
        return 0, "recovery continuation"
    k, base = cont.seq, cont.tcp_base
    if k == base - 1:
        return cont.start_cwnd, "handshake"
    # a FULL2 continuation (delayed-ack pairs, core/delta.py) stands for two acks: two plans,
    # plus the bootstrap of a PAIR packet left without a partner at the end of an epoch
    acks = 2 if cont.type == FULL2 else 1
    if pl.first_missing(blocks, base, k) is None:
        return 2 * acks + (acks - 1), "normal" if acks == 1 else "normal.paired"
    return (max_gap + 1) * acks + (acks - 1), (
        "recovery plan" if acks == 1 else "recovery plan.paired")


# ------------------------------------------------------------------------------- watchdog
class Hang(BaseException):
    """Raised by the watchdog inside a call that runs too long (BaseException: the engine's
    `except Exception` must not swallow it)."""


class Crash(Exception):
    def __init__(self, signature: str, detail: str = "") -> None:
        super().__init__(signature)
        self.signature = signature
        self.detail = detail


class Watchdog:
    """A periodic SIGALRM that interrupts the current call once it is older than `limit`."""

    def __init__(self, limit: float = WATCHDOG_S) -> None:
        self.limit = limit
        self.start = 0.0
        self.active = False
        self.enabled = False
        self._old = None

    def _on_alarm(self, signum, frame) -> None:
        if self.active and time.perf_counter() - self.start > self.limit:
            self.active = False
            raise Hang()

    def __enter__(self) -> Watchdog:
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            self._old = signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
            self.enabled = True
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, self._old)
            self.enabled = False


# ------------------------------------------------------------------------------- coverage
_PKG = REPO / "trickles_kit"
COVERED_DIRS = ("core", "wire", "apps")
_PREFIXES = tuple(str(_PKG / d) + os.sep for d in COVERED_DIRS)


class LineCoverage:
    """Lines of trickles_kit/{core,wire,apps} run by traced executions (sys.settrace)."""

    def __init__(self) -> None:
        self.lines: set[tuple[str, int]] = set()

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename.startswith(_PREFIXES):
            return self._local
        return None

    def _local(self, frame, event, arg):
        if event == "line":
            self.lines.add((frame.f_code.co_filename, frame.f_lineno))
        return self._local

    def report(self) -> dict:
        files = {}
        for d in ("core", "wire", "apps"):
            for path in sorted((_PKG / d).glob("*.py")):
                exe = executable_lines(path)
                if not exe:
                    continue
                hit = {ln for f, ln in self.lines if f == str(path)} & exe
                files[f"{d}/{path.name}"] = {"lines": len(exe), "hit": len(hit),
                                             "percent": round(100 * len(hit) / len(exe), 1)}
        server_side = [k for k in files if k.startswith("wire/") or k in SERVER_SIDE]
        tot = sum(files[k]["lines"] for k in server_side)
        hit = sum(files[k]["hit"] for k in server_side)
        return {"method": "sys.settrace line events on sampled executions; executable lines = "
                          "co_lines() of function bodies (def lines excluded)",
                "server_side_files": server_side,
                "server_side_percent": round(100 * hit / max(tot, 1), 1),
                "server_side_lines": tot, "server_side_hit": hit, "files": files}


SERVER_SIDE = ("core/server.py", "core/plan.py", "core/cc.py", "core/seal.py", "core/keys.py",
               "core/nonces.py", "core/replay.py", "apps/generated.py", "apps/common.py")


def executable_lines(path: Path) -> set[int]:
    code = compile(path.read_text(), str(path), "exec")
    out: set[int] = set()
    stack = [c for c in code.co_consts if isinstance(c, CodeType)]
    while stack:
        co = stack.pop()
        if co.co_flags & CO_NEWLOCALS:  # a function body (not a class body or the module)
            out.update(ln for _, _, ln in co.co_lines()
                       if ln is not None and ln != co.co_firstlineno)
        stack.extend(c for c in co.co_consts if isinstance(c, CodeType))
    return out


# ------------------------------------------------------------------------------- captures
@dataclass
class Seeds:
    """Real wire material from two hand-driven connections (tests/helpers_security.py)."""

    syn: bytes
    requests: list[tuple[int, bytes, float]]  # (k, segment, server time)
    responses: list[bytes]  # server segments (to the client)
    other_conts: list[bytes]  # FULL continuations of another connection (splice material)
    genuine: set[bytes]  # MAC-covered bytes of every continuation the server sealed


_SEEDS: Seeds | None = None


def covered_bytes(cont75: bytes | bytearray) -> bytes:
    return bytes(cont75[0:6]) + bytes(cont75[18:75])


def seeds() -> Seeds:
    """Capture once per process: normal (k = 0..3), recovery (5..8), bootstrap (9..11) requests."""
    global _SEEDS
    if _SEEDS is None:
        cap = run_handshake(rounds=5)
        other = run_handshake(start=9.0, rounds=3)  # another 8 s bucket: another connId
        genuine = set()
        conts = []
        for c in (cap, other):
            for seg, _ in c.responses.values():
                s = decode_segment(seg)
                raw = s.payload[8 : 8 + FULL_LEN]
                if raw and raw[0] in (FULL1, FULL2):
                    genuine.add(covered_bytes(raw))
                    if c is other:
                        conts.append(bytes(raw))
        reqs = [(k, seg, t) for k, (seg, t) in sorted(cap.requests.items())]
        _SEEDS = Seeds(cap.syn, reqs, [seg for seg, _ in cap.responses.values()], conts, genuine)
    return _SEEDS


# ------------------------------------------------------------------------------- byte mutator
INTERESTING_8 = (0, 1, 2, 3, 4, 8, 16, 32, 64, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING_16 = (0, 1, 2, 3, 7, 11, 18, 28, 75, 0x7F, 0x80, 0xFF, 1447, 1448, 1449, 0x7FFF,
                  0x8000, 0xFFF8, 0xFFFE, 0xFFFF)
INTERESTING_32 = (0, 1, 2, 0x3FFF, 4095, 8191, 8192, 1 << 20, 0x7FFFFFFF, 0x80000000,
                  0xFFFFF000, 0xFFFFFFFE, 0xFFFFFFFF)
DICTIONARY = (b"GEN ", b"GEN 4294967296 7", b"GEN 4294967295 7", b"4294967296", b"4294967295",
              b"18446744073709551615", b"18446744073709551616", b"-1", b"0", b"1448", b" ",
              b"\n", b"\r\n", b"\x00", b"GET / HTTP/1.1\r\n\r\n", b"\xfd\x06TK", b"\x01\x01",
              b"\x02\x00\x00", b"\x20\x00\x07", b"\x30\x00\x0b", b"\x40\x00\x07", b"\x21\xff\xff")


class ByteMutator:
    """Stacked havoc mutations in the style of AFL/libFuzzer."""

    def __init__(self, rng: random.Random, max_len: int = 4096) -> None:
        self.rng = rng
        self.max_len = max_len

    def mutate(self, data: bytes, corpus: list, lo: int = 0) -> bytearray:
        """Mutate mostly at offsets >= lo (e.g. past the TCP header)."""
        rng = self.rng
        d = bytearray(data)
        for _ in range(1 << rng.randrange(4)):
            n = len(d)
            start = lo if n > lo and rng.random() < 0.8 else 0
            pos = rng.randrange(start, n) if n > start else 0
            op = rng.randrange(14)
            if op == 0 and n:
                d[pos] ^= 1 << rng.randrange(8)
            elif op == 1 and n:
                d[pos] = rng.randrange(256)
            elif op == 2 and n:
                d[pos] = rng.choice(INTERESTING_8)
            elif op == 3 and n > pos + 1:
                d[pos : pos + 2] = rng.choice(INTERESTING_16).to_bytes(2, "big")
            elif op == 4 and n > pos + 3:
                d[pos : pos + 4] = rng.choice(INTERESTING_32).to_bytes(4, "big")
            elif op == 5 and n > pos + 3:
                w = (int.from_bytes(d[pos : pos + 4], "big") + rng.randint(-35, 35)) & M32
                d[pos : pos + 4] = w.to_bytes(4, "big")
            elif op == 6 and n:
                d[pos] = (d[pos] + rng.randint(-35, 35)) & 0xFF
            elif op == 7 and n:
                del d[pos : pos + rng.choice((1, 1, 2, 4, 8, 12, 75, rng.randrange(1, 256)))]
            elif op == 8:
                d[pos:pos] = rng.randbytes(rng.choice((1, 1, 2, 4, 12, rng.randrange(1, 300))))
            elif op == 9:
                tok = rng.choice(DICTIONARY)
                if rng.random() < 0.5:
                    d[pos:pos] = tok
                else:
                    d[pos : pos + len(tok)] = tok
            elif op == 10 and n > 1:
                a = rng.randrange(n)
                b = min(n, a + rng.randrange(1, 64))
                d[pos:pos] = d[a:b]
            elif op == 11 and corpus:
                other = rng.choice(corpus)
                if isinstance(other, bytes | bytearray) and other:
                    cut = rng.randrange(len(other))
                    d[pos:] = other[cut:] if rng.random() < 0.5 else other[pos:]
            elif op == 12 and n:
                del d[rng.randrange(start, n) if n > start else 0 :]
            elif op == 13:
                d += rng.randbytes(rng.randrange(1, 200))
        if len(d) > self.max_len:
            del d[self.max_len :]
        return d


def _checksummed(d: bytearray, src: bytes = CLIENT_IP, dst: bytes = SERVER_IP) -> bytes:
    if len(d) >= 18:
        d[16:18] = b"\0\0"
        d[16:18] = checksum(src, dst, bytes(d)).to_bytes(2, "big")
    return bytes(d)


# ------------------------------------------------------------------------------- harnesses
def exc_signature(e: BaseException, tb_text: str | None = None) -> str:
    """type@file:function:source of the innermost trickles_kit frame (stable across line shifts)."""
    text = tb_text or "".join(traceback.format_exception(e))
    return tb_signature(text)


_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)\n\s+(.*)')


def tb_signature(text: str) -> str:
    frames = [m for m in _FRAME.finditer(text) if "trickles_kit" in m.group(1)]
    last = text.strip().splitlines()[-1] if text.strip() else "?"
    etype = last.split(":", 1)[0].rsplit(".", 1)[-1]
    if frames:
        f = frames[-1]
        return f"{etype}@{Path(f.group(1)).name}:{f.group(2)}:{f.group(3).strip()[:60]}"
    return f"{etype}@?"


class Harness:
    name = "?"
    max_len = 4096
    mutate_from = 0

    def seed_inputs(self) -> list:
        raise NotImplementedError

    def mutate(self, x, rng: random.Random, corpus: list):
        return bytes(self.mut.mutate(x, corpus, self.mutate_from))

    def execute(self, x) -> str:
        raise NotImplementedError

    def fresh(self) -> None:
        """Reset every piece of state (used before a reproduction)."""

    def in_domain(self, x) -> bool:
        return True

    def to_bytes(self, x) -> bytes:
        return x

    def describe(self, x) -> dict:
        return {"input_hex": self.to_bytes(x).hex()}

    def shrink_candidates(self, x):
        """Smaller variants of x, most aggressive first (ddmin on bytes)."""
        yield from ddmin_candidates(x)

    def stats(self) -> dict:
        return {}


def ddmin_candidates(x: bytes):
    n = len(x)
    size = n // 2
    while size >= 1:
        for start in range(0, n, size):
            yield x[:start] + x[start + size :]
        size //= 2
    for i in range(n):
        if x[i] != 0:
            yield x[:i] + b"\0" + x[i + 1 :]


class DecoderHarness(Harness):
    def __init__(self, name: str, fn: Callable[[bytes], object],
                 roundtrip: Callable[[bytes, object], None], seeds_: list[bytes],
                 mutate_from: int = 0, fix: Callable[[bytearray], bytes] | None = None) -> None:
        self.name = name
        self.fn = fn
        self.roundtrip = roundtrip
        self._seeds = seeds_
        self.mutate_from = mutate_from
        self.fix = fix
        self.mut: ByteMutator

    def seed_inputs(self) -> list:
        return list(self._seeds)

    def mutate(self, x, rng, corpus):
        d = self.mut.mutate(x, corpus, self.mutate_from)
        if self.fix is not None and rng.random() < 0.7:
            return self.fix(d)
        return bytes(d)

    def execute(self, x: bytes) -> str:
        try:
            value = self.fn(x)
        except DecodeError as e:
            return "decode." + e.reason
        except Exception as e:
            raise Crash("escaped." + exc_signature(e), traceback.format_exc()) from e
        try:
            self.roundtrip(x, value)
        except Crash:
            raise
        except Exception as e:
            raise Crash("roundtrip." + exc_signature(e), traceback.format_exc()) from e
        return "ok"


def _seg_roundtrip(x: bytes, s) -> None:
    again = encode_segment(SERVER_IP, CLIENT_IP, s.src_port, s.dst_port, s.seq, s.ack, s.flags,
                           s.payload, s.trickles_len, s.window)
    if decode_segment(again, SERVER_IP, CLIENT_IP) != s:
        raise Crash("roundtrip.segment", x.hex())


def _req_roundtrip(x: bytes, r) -> None:
    if decode_request(r.encode()) != r:
        raise Crash("roundtrip.request", x.hex())


def _resp_roundtrip(x: bytes, r) -> None:
    if decode_response(r.encode()) != r:
        raise Crash("roundtrip.response", x.hex())


def _chunks_roundtrip(x: bytes, chunks) -> None:
    if decode_chunks(encode_chunks(chunks)) != chunks:
        raise Crash("roundtrip.chunks", x.hex())


def _cont_call(x: bytes):
    """Input byte 0 is the offset; the rest is the buffer."""
    if not x:
        raise DecodeError("truncated", "empty fuzz input")
    return decode_continuation(x[1:], x[0]), x


def _cont_roundtrip(_x: bytes, value) -> None:
    (cont, end), x = value
    off = x[0]
    if cont.encode() != x[1:][off:end]:
        raise Crash("roundtrip.continuation", x.hex())


def decoder_harnesses() -> list[DecoderHarness]:
    s = seeds()
    reqs = [seg for _, seg, _ in s.requests] + [s.syn]
    resps = s.responses
    req_pl = [seg[28:] for seg in reqs]
    resp_pl = [seg[28:] for seg in resps]
    chunk_seeds = [seg[28 + decode_segment(seg).trickles_len :] for seg in resps]
    chunk_seeds += [encode_chunks([DataChunk(0, b"abc", True), SkipChunk(5, 9), FinHint(77)]),
                    b"\0\0" + encode_data_chunk(M32, b"x" * 40)]
    conts = []
    for p in resp_pl:
        clen = 75 if p[8] else 18
        conts.append(b"\0" + p[8 : 8 + clen])
        conts.append(b"\x08" + p[:8] + p[8 : 8 + clen])
    # responses re-checksummed for the client -> server addresses the _addr harness uses
    fixed_resps = [_checksummed(bytearray(seg)) for seg in resps[:6]]
    return [
        DecoderHarness("decode_segment", decode_segment, _seg_roundtrip, reqs + resps[:6]),
        DecoderHarness("decode_segment_addr", lambda b: decode_segment(b, CLIENT_IP, SERVER_IP),
                       _seg_roundtrip, reqs + fixed_resps, fix=_checksummed),
        DecoderHarness("decode_request", decode_request, _req_roundtrip, req_pl),
        DecoderHarness("decode_response", decode_response, _resp_roundtrip, resp_pl),
        DecoderHarness("decode_chunks", decode_chunks, _chunks_roundtrip, chunk_seeds),
        DecoderHarness("decode_continuation", _cont_call, _cont_roundtrip, conts),
    ]


class EngineBase(Harness):
    """Feeds ServerEngine.receive and checks every invariant on what comes back."""

    with_events = False  # pass an event sink to the engine (exercises its event paths)

    def __init__(self) -> None:
        self.server: ServerEngine
        self.events: Counter = Counter()
        self.drop_reasons: Counter[str] = Counter()
        self.packets: Counter[int] = Counter()
        self.bound_kinds: Counter[str] = Counter()
        self.fresh()

    def fresh(self) -> None:
        old = getattr(self, "server", None)
        if old is not None:
            self._harvest(old)
        self.server = make_server(log=self._sink if self.with_events else None)
        self.execs_on_server = 0
        self._reason: str | None = None
        orig = self.server._drop

        def _drop(reason, now, *a, **kw):  # observe the verdict without touching the engine
            self._reason = reason
            return orig(reason, now, *a, **kw)

        self.server._drop = _drop

    def _sink(self, e) -> None:
        self.events[e.kind] += 1

    def _harvest(self, server: ServerEngine) -> None:
        for k, v in server.counters.items():
            if k.startswith("drop."):
                self.drop_reasons[k] += v

    def stats(self) -> dict:
        self._harvest(self.server)
        self.server.counters.clear()
        return {"drop_reasons": dict(sorted(self.drop_reasons.items())),
                "packets_per_accepted_request": {str(k): v for k, v in
                                                 sorted(self.packets.items())},
                "bound_kinds": dict(self.bound_kinds), "events": dict(self.events)}

    def feed(self, seg: bytes, now: float, in_domain: bool = True) -> str:
        server = self.server
        self.execs_on_server += 1
        self._reason = None
        errors = server.counters["handler_error"]
        try:
            out = server.receive(seg, CLIENT_IP, now)
        except Exception as e:  # the engine must never raise
            raise Crash("escaped." + exc_signature(e), traceback.format_exc()) from e
        reason = self._reason
        if reason is not None and reason.startswith("internal."):
            if server.counters["handler_error"] != errors:
                text = server.last_error or ""
            else:
                text = _decoder_traceback(seg)
            raise Crash(tb_signature(text) if text else "internal." + reason, text)
        if out:
            self.check_outputs(seg, out, in_domain, now)
            return f"out.{len(out)}"
        return "drop." + reason if reason is not None else "terminate"

    def check_outputs(self, seg: bytes, out: list[bytes], in_domain: bool, now: float) -> None:
        cfg = self.server.cfg
        s = decode_segment(seg, CLIENT_IP, SERVER_IP)
        # the request as the server read it: delta flags stripped, a COMPACT form expanded
        plain = s.payload
        if plain and plain[0] & 0xC0:
            _, plain = unpack_request(plain, s.ack, self.server.keys.current(now), cfg.delta)
        req = decode_request(plain)
        n = len(out)
        self.packets[n] += 1
        rtype = REQ_SYN if s.flags & SYN else req.type
        blocks = [(b.left, b.right) for b in req.sacks]
        bound, kind = packet_bound(rtype, req.cont, blocks, cfg.max_gap)
        self.bound_kinds[kind] += 1
        if n > bound:
            raise Crash(f"invariant.packet_bound.{kind}", f"{n} packets > {bound}: {seg.hex()}")
        if not kind.startswith(("handshake", "recovery plan")) and n > 5:
            raise Crash("invariant.five_packets", seg.hex())
        if kind == "handshake" and in_domain and n > HANDSHAKE_MAX_CWND:
            raise Crash("invariant.initial_window", seg.hex())
        keyed = self.server.keys
        seqs = set()
        for i, o in enumerate(out):
            try:
                os_ = decode_segment(o, SERVER_IP, CLIENT_IP)
                resp = decode_response(os_.payload)
            except DecodeError as e:
                raise Crash("invariant.output_decode." + e.reason, o.hex()) from e
            data = sum(len(c.data) for c in resp.chunks if isinstance(c, DataChunk))
            if data > cfg.mss:
                raise Crash("invariant.mss", f"{data} bytes > {cfg.mss}")
            if resp.num_siblings != n or resp.position != i:
                raise Crash("invariant.siblings", o.hex())
            if os_.src_port != SERVER_PORT or os_.dst_port != s.src_port:
                raise Crash("invariant.ports", o.hex())
            if os_.seq in seqs:
                raise Crash("invariant.duplicate_packet_number", o.hex())
            seqs.add(os_.seq)
            c = resp.cont
            if c.is_full:
                ps = pseudo_header(CLIENT_IP, s.src_port, SERVER_IP, SERVER_PORT)
                raw = c.encode()
                if mac_with(keyed.mac_hasher(c.key_epoch), ps, raw) != raw[MAC_OFFSET:]:
                    raise Crash("invariant.output_mac", o.hex())
                if in_domain and not sealable(c, M32):
                    raise Crash("invariant.sealed_out_of_domain", f"{c}")


def _decoder_traceback(seg: bytes) -> str:
    """The traceback of a decoder bug the engine counted as drop.internal.* (first try block)."""
    try:
        s = decode_segment(seg, CLIENT_IP, SERVER_IP)
        decode_request(s.payload)
    except DecodeError:
        return ""
    except Exception:
        return traceback.format_exc()
    return ""


class EngineRaw(EngineBase):
    """Byte mutations of captured segments (SYN + requests); checksum fixed 95% of the time."""

    name = "engine_raw"
    mutate_from = 28

    def __init__(self) -> None:
        super().__init__()
        s = seeds()
        self.now = max(t for _, _, t in s.requests)
        self._seeds = [seg for _, seg, _ in s.requests] + [s.syn]

    def seed_inputs(self) -> list:
        return list(self._seeds)

    def mutate(self, x, rng, corpus):
        d = self.mut.mutate(x, corpus, self.mutate_from)
        if rng.random() < 0.03 and len(d) > 13:
            d[13] ^= rng.choice((SYN, FIN, ACK))
        return _checksummed(d) if rng.random() < 0.95 else bytes(d)

    def execute(self, x: bytes) -> str:
        if self.execs_on_server > 200_000:
            self.fresh()
        out = self.feed(x, self.now)
        if len(self.server.replay):  # something was accepted: judge the next input afresh
            fresh_replay(self.server)
        return out


# ----------------------------------------------------------------- the key-holding harness
# Continuation fields in pack_body order
F_TYPE, F_SEQ, F_FCHILD, F_CSTATE, F_PARENT, F_CTS, F_TS, F_MRTT, F_STATE, F_FLOSS, F_FBS, \
    F_START, F_SSTH, F_BASE, F_CID, F_EPOCH = range(16)
CONT_FIELDS = ("type", "seq", "first_child", "client_state", "parent", "client_timestamp",
               "timestamp", "mrtt", "state", "first_loss", "first_bootstrap_seq", "start_cwnd",
               "ssthresh", "tcp_base", "conn_id", "key_epoch")
SERVER_OWNED = (F_TYPE, F_SEQ, F_FCHILD, F_TS, F_MRTT, F_STATE, F_FLOSS, F_FBS, F_START, F_SSTH,
                F_BASE, F_CID, F_EPOCH)
_SACK = struct.Struct("!III")
_RANGE = struct.Struct("!II")


@dataclass
class Spec:
    """One structured request; `build` turns it into a segment sealed with the server's key."""

    tmpl: int
    rtype: int
    fields: list[int]
    sacks: list[tuple[int, int, int | None]]  # summary None = the correct nonce summary
    ucont: bytes
    ranges: list[tuple[int, int]]  # (start, length) as on the wire
    app: bytes
    dt: float = 0.0
    flags: int = ACK
    rseq: int = 1
    bad_mac: bool = False
    keep_replay: bool = False
    havoc: int | None = None  # seed of a byte-level havoc pass over the built segment

    def copy(self) -> Spec:
        return Spec(self.tmpl, self.rtype, list(self.fields), list(self.sacks), self.ucont,
                    list(self.ranges), self.app, self.dt, self.flags, self.rseq, self.bad_mac,
                    self.keep_replay, self.havoc)

    def cont(self) -> Continuation:
        return Continuation(*self.fields)


class EngineKeyed(EngineBase):
    """Holds the master secret: mutates any field and re-seals what the server would seal."""

    name = "engine_keyed"
    with_events = True

    def __init__(self, domain: str = "sealable") -> None:
        self.domain = domain
        if domain == "any":
            self.name = "engine_keyed_any"
        super().__init__()
        s = seeds()
        self.templates: list[Spec] = []
        self.tmpl_now: list[float] = []
        for i, (_, seg, t) in enumerate(s.requests):
            sg = decode_segment(seg)
            r = decode_request(sg.payload)
            c = r.cont
            self.templates.append(Spec(
                i, r.type, [getattr(c, f) for f in CONT_FIELDS], [tuple(b) for b in r.sacks],
                r.ucont, [(a, b - a) for a, b in r.ranges], r.app, 0.0, sg.flags, sg.seq))
            self.tmpl_now.append(t)
        sg = decode_segment(s.syn)
        r = decode_request(sg.payload)
        first = self.templates[0]
        self.templates.append(Spec(  # the SYN (no continuation: its fields are not sent)
            len(self.templates), REQ_SYN, list(first.fields), [], r.ucont,
            [(a, b - a) for a, b in r.ranges], r.app, 0.0, sg.flags, sg.seq))
        self.tmpl_now.append(self.tmpl_now[0] - 0.02)
        self.box = UcontBox(self.server.keys)
        self._ucont_ok: dict[tuple[int, bytes], bool] = {}
        self.out_of_domain_execs = 0

    def seed_inputs(self) -> list:
        return [t.copy() for t in self.templates]

    def to_bytes(self, x: Spec) -> bytes:
        return self.build(x)[0]

    def in_domain(self, x: Spec) -> bool:
        """Sealable continuation, and a user continuation the handler could have sealed."""
        if not sealable(x.cont()):
            return False
        if len(x.ucont) != 44:  # not a sealed (size, seed): the handler drops it
            return True
        key = (x.fields[F_CID] & M64, x.ucont)
        ok = self._ucont_ok.get(key)
        if ok is None:
            plain = self.box.open(x.ucont, key[0])
            ok = plain is None or len(plain) != _UC.size or _UC.unpack(plain)[0] <= 1 << 32
            if len(self._ucont_ok) > 4096:
                self._ucont_ok.clear()
            self._ucont_ok[key] = ok
        return ok

    # -- building ------------------------------------------------------------------------
    def build(self, x: Spec) -> tuple[bytes, float]:
        f = [v & (M64 if i == F_CID else 0xFF if i in (F_TYPE, F_FCHILD, F_STATE) else M32)
             for i, v in enumerate(x.fields)]
        body = pack_body(*f)
        mac = mac_with(self.server.keys.mac_hasher(f[F_EPOCH]), PSEUDO, body)
        if x.bad_mac:
            mac = bytes([mac[0] ^ 1]) + mac[1:]
        parts = [bytes((x.rtype & 0xFF,))]
        if x.rtype != REQ_SYN:
            parts.append(body + mac)
        parts.append(bytes((len(x.sacks) & 0xFF,)))
        nonces = self.server.nonces
        for left, right, summ in x.sacks:
            left &= M32
            right &= M32
            if summ is None:
                summ = nonces.range_summary(f[F_CID], f[F_BASE], left, right)
            parts.append(_SACK.pack(left, right, summ & M32))
        parts.append((len(x.ucont) & 0xFFFF).to_bytes(2, "big"))
        parts.append(x.ucont)
        parts.append(bytes((len(x.ranges) & 0xFF,)))
        parts.extend(_RANGE.pack(a & M32, b & M32) for a, b in x.ranges)
        parts.append(x.app)
        seg = encode_segment(CLIENT_IP, SERVER_IP, CLIENT_PORT, SERVER_PORT, x.rseq & M32,
                             f[F_SEQ], x.flags & 0xFF, b"".join(parts), 0, 0xFFFF)
        if x.havoc is not None:
            r = random.Random(x.havoc)
            d = ByteMutator(r).mutate(seg, [], 28)
            seg = _checksummed(d) if r.random() < 0.9 else bytes(d)
        return seg, self.tmpl_now[x.tmpl] + x.dt

    def execute(self, x: Spec) -> str:
        if self.execs_on_server > 200_000:
            self.fresh()
        seg, now = self.build(x)
        dom = self.in_domain(x)
        if not dom:
            self.out_of_domain_execs += 1
        if not x.keep_replay and len(self.server.replay):
            fresh_replay(self.server)
        return self.feed(seg, now, dom)

    def fresh(self) -> None:
        super().fresh()
        if hasattr(self, "box"):
            self.box = UcontBox(self.server.keys)

    # -- mutating ------------------------------------------------------------------------
    def mutate(self, x: Spec, rng: random.Random, corpus: list) -> Spec:
        for _ in range(10):
            y = self._mutate_once(x, rng)
            if self.domain == "any" or self.in_domain(y):
                return y
        return self.templates[rng.randrange(len(self.templates))].copy()

    def _mutate_once(self, x: Spec, rng: random.Random) -> Spec:
        y = x.copy()
        y.havoc = None
        y.bad_mac = rng.random() < 0.02
        y.keep_replay = rng.random() < 0.03
        resack = False
        for _ in range(rng.choice((1, 1, 2, 3, 4))):
            op = rng.randrange(12)
            if op == 0:
                y.rtype = rng.choice((REQ_NORMAL, REQ_NORMAL, REQ_SLOWSTART, REQ_FIN, REQ_SYN,
                                      rng.randrange(256)))
                y.flags = ACK | (SYN if y.rtype == REQ_SYN and rng.random() < 0.8 else 0)
                if rng.random() < 0.1:
                    y.flags = rng.randrange(256)
            elif op == 1:
                y.fields[rng.choice((F_CSTATE, F_PARENT, F_CTS))] = _u32(rng)
            elif op in (2, 3, 4):
                self._server_owned(y, rng)
                resack = rng.random() < 0.7
            elif op == 5:
                resack = True
            elif op == 6:
                y.ranges = _ranges(rng)
            elif op == 7:
                y.ucont = self._ucont(y, rng)
            elif op == 8:
                y.app = _app(rng)
            elif op == 9:
                y.dt = rng.choice((0.0, 0.001, 0.5, 3.0, 30.0, 58.0, -0.5, rng.uniform(0, 58)))
            elif op == 10:
                y.rseq = _u32(rng)
            else:
                y.havoc = rng.getrandbits(32)
        f = y.fields
        for i in range(16):
            f[i] &= M64 if i == F_CID else 0xFF if i in (F_TYPE, F_FCHILD, F_STATE) else M32
        if resack:
            y.sacks = self._sacks(y, rng)
        return y

    def _server_owned(self, y: Spec, rng: random.Random) -> None:
        f = y.fields
        now_ms = int((self.tmpl_now[y.tmpl] + y.dt) * 1000)
        scenario = rng.randrange(8)
        if scenario == 0:  # the handshake continuation of some epoch
            f[F_BASE] = rng.choice((1, 1, 2, 9, _small(rng), _u32(rng)))
            f[F_SEQ] = f[F_BASE] - 1
            f[F_START] = rng.choice((1, 2, 3, 10, 64, rng.randint(1, 64)))
            f[F_SSTH] = rng.choice((f[F_START], 0x3FFF, M32, f[F_START] + rng.randrange(100)))
            f[F_STATE] = NORMAL
        elif scenario == 1:  # an epoch in slow start / congestion avoidance
            f[F_BASE] = rng.choice((1, 9, _small(rng), _u32(rng)))
            f[F_START] = rng.choice((1, 2, 3, rng.randint(1, 64), rng.randint(1, 4095)))
            f[F_SSTH] = rng.choice((f[F_START], f[F_START] + rng.randrange(64), 0x3FFF, M32))
            f[F_SEQ] = f[F_BASE] + rng.choice((0, 1, 2, 5, 50, 1000, 100_000, _u32(rng)))
            f[F_STATE] = rng.choice((NORMAL, NORMAL, BOOTSTRAP, RECOVERY))
        elif scenario == 2:  # a bootstrap continuation of a recovery epoch
            f[F_BASE] = rng.choice((9, _small(rng), _u32(rng)))
            f[F_START] = f[F_SSTH] = rng.choice((1, 2, rng.randint(1, 4095)))
            f[F_SEQ] = f[F_BASE] + rng.randrange(f[F_START] + 2)
            f[F_STATE] = BOOTSTRAP
            f[F_FBS] = f[F_BASE]
            f[F_FLOSS] = max(f[F_BASE] - rng.randint(1, 30), 0)
        elif scenario == 3:  # the server clock field: fresh, stale, future
            f[F_TS] = (now_ms + rng.choice((0, -1, -5000, -119_999, -120_001, -10 ** 6, 4999,
                                            5001, 10 ** 6, 1 << 31, _u32(rng)))) & M32
        elif scenario == 4:
            f[F_EPOCH] = rng.choice((0, 0, 1, M32, _u32(rng)))
        elif scenario == 5:
            f[F_CID] = rng.getrandbits(64) if rng.random() < 0.8 else rng.choice((0, M64))
        elif scenario == 6:
            f[F_TYPE] = rng.choice((FULL1, FULL2))
            f[F_FCHILD] = rng.randrange(256)
            f[F_MRTT] = _u32(rng)
        else:  # one field, any value (out of the domain unless it happens to fit)
            i = rng.choice(SERVER_OWNED)
            f[i] = (rng.randrange(256) if i in (F_TYPE, F_FCHILD, F_STATE)
                    else rng.getrandbits(64) if i == F_CID else _u32(rng))

    def _sacks(self, y: Spec, rng: random.Random) -> list:
        k, base = y.fields[F_SEQ], y.fields[F_BASE]
        mode = rng.randrange(7)
        out: list = []
        if mode == 0:  # the contiguous proof
            out = [(min(base, k) - rng.choice((0, 0, 1, 5)), k, None)]
        elif mode in (1, 2):  # holes
            pos = min(base, k) - rng.choice((0, 0, 1))
            while pos <= k and len(out) < 10:
                if rng.random() < 0.3:
                    pos += rng.choice((1, 1, 2, 3, 20, 21, 40))
                    continue
                end = min(k, pos + rng.choice((0, 1, 2, 5, 30)))
                out.append((pos, end, None))
                pos = end + 1 + rng.choice((1, 1, 2, 4, 19, 20, 21, 25))
        elif mode == 3:
            out = []
        elif mode == 4:  # junk around the window
            for _ in range(rng.randrange(1, 12)):
                a = base + rng.randint(-9000, 50)
                out.append((a, a + rng.randint(-2, 40), None))
            if rng.random() < 0.5:
                out.sort()
        elif mode == 5:
            out = list(self.templates[y.tmpl].sacks)
        else:
            out = [(_u32(rng), _u32(rng), None) for _ in range(rng.randrange(1, 4))]
        if out and rng.random() < 0.1:
            i = rng.randrange(len(out))
            out[i] = (out[i][0], out[i][1], _u32(rng))  # a wrong summary
        return out

    def _ucont(self, y: Spec, rng: random.Random) -> bytes:
        cid = y.fields[F_CID] & M64
        r = rng.randrange(6)
        if r == 0:
            return self.templates[y.tmpl].ucont
        if r in (1, 2):
            size = rng.choice((0, 1, 1447, 1448, 5792, 10 ** 6, M32, 1 << 32, _u32(rng)))
            if self.domain == "any" and rng.random() < 0.3:
                size = rng.choice(((1 << 32) + 1, M64, rng.getrandbits(64)))
            seed = rng.choice((7, 0, M64, rng.getrandbits(64)))
            return self.box.seal(_UC.pack(size, seed), cid)
        if r == 3:
            return b""
        if r == 4:
            if y.rtype == REQ_SYN:  # SYN padding (anti-amplification)
                return bytes(rng.choice((0, 1, 100, 300, 480, 600, 1400)))
            return rng.randbytes(rng.choice((1, 27, 28, 43, 44, 45, 300)))
        u = bytearray(self.templates[y.tmpl].ucont)
        if u:
            u[rng.randrange(len(u))] ^= 1 << rng.randrange(8)
        return bytes(u)


def _u32(rng: random.Random) -> int:
    return rng.choice(INTERESTING_32) if rng.random() < 0.5 else rng.getrandbits(32)


def _small(rng: random.Random) -> int:
    return rng.choice((1, 2, 3, 100, 8191, 8192, 1 << 20, WRAP_LIMIT - 9000, WRAP_LIMIT))


def _ranges(rng: random.Random) -> list[tuple[int, int]]:
    out = []
    for _ in range(rng.choice((0, 1, 1, 2, 3, 5, 9, 65))):
        start = rng.choice((0, 1, 1447, 1448, 999_999, 10 ** 6, M32 - 1448, M32, _u32(rng)))
        length = rng.choice((0, 1, 1447, 1448, 1449, 0xFFFF, (1 << 32) - start, _u32(rng)))
        out.append((start, length))
    return out


def _app(rng: random.Random) -> bytes:
    r = rng.randrange(5)
    if r == 0:
        return b""
    if r == 1:
        return rng.randbytes(rng.randrange(1, 200))
    size = rng.choice((0, 1, 1448, 10 ** 6, M32, 1 << 32, (1 << 32) + 1, -1, M64,
                       rng.getrandbits(40)))
    seed = rng.choice((0, 7, M64, 1 << 64, -1, rng.getrandbits(64)))
    sep = rng.choice((" ", " ", "  ", "\t", "_"))
    tail = rng.choice(("", "", "\r\n", " extra", "\nGEN 1 1"))
    return f"GEN{sep}{size}{sep}{seed}{tail}".encode()


# ------------------------------------------------------------------------------- the loop
@dataclass
class Finding:
    signature: str
    count: int = 0
    first_exec: int = 0
    in_domain: bool = True
    known: str | None = None
    repro: dict = field(default_factory=dict)


@dataclass
class HarnessResult:
    name: str
    executions: int = 0
    seconds: float = 0.0
    crashes: dict[str, Finding] = field(default_factory=dict)
    hangs: dict[str, Finding] = field(default_factory=dict)
    out_of_domain: dict[str, Finding] = field(default_factory=dict)
    slow_not_confirmed: int = 0
    max_call_ms: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    corpus: int = 0
    traced: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def unknown_crashes(self) -> int:
        return sum(f.count for f in self.crashes.values() if not f.known)

    @property
    def hang_count(self) -> int:
        return sum(f.count for f in self.hangs.values())

    def to_json(self) -> dict:
        def fj(d: dict[str, Finding]) -> list:
            return [{"signature": f.signature, "count": f.count, "first_exec": f.first_exec,
                     "known": f.known, "repro": f.repro} for f in d.values()]

        return {"executions": self.executions, "seconds": round(self.seconds, 2),
                "executions_per_s": round(self.executions / max(self.seconds, 1e-9)),
                "crashes": sum(f.count for f in self.crashes.values()),
                "unknown_crashes": self.unknown_crashes,
                "hangs": self.hang_count, "slow_calls_not_confirmed": self.slow_not_confirmed,
                "max_call_ms": round(self.max_call_ms, 2),
                "crash_list": fj(self.crashes), "hang_list": fj(self.hangs),
                "out_of_domain_findings": fj(self.out_of_domain),
                "outcomes": dict(self.outcomes.most_common()), "corpus": self.corpus,
                "traced_executions": self.traced, **self.extra}


def make_harness(name: str) -> Harness:
    if name in DECODERS:
        return {h.name: h for h in decoder_harnesses()}[name]
    if name == "engine_raw":
        return EngineRaw()
    if name == "engine_keyed":
        return EngineKeyed("sealable")
    if name == "engine_keyed_any":
        return EngineKeyed("any")
    raise ValueError(f"unknown harness {name}")


def _timed_call(wd: Watchdog, fn: Callable, *args) -> tuple[str, float, BaseException | None]:
    t0 = time.perf_counter()
    wd.start = t0
    wd.active = True
    try:
        out = fn(*args)
        err = None
    except (Crash, Hang) as e:
        out, err = "", e
    finally:
        wd.active = False
    return out, time.perf_counter() - t0, err


def _timed(h: Harness, wd: Watchdog, x) -> tuple[str, float, BaseException | None]:
    return _timed_call(wd, h.execute, x)


def run_harness(name: str, seconds: float | None = None, max_execs: int | None = None,
                seed: int = 1, trace_every: int = 64, coverage: LineCoverage | None = None,
                call_limit: float = CALL_LIMIT_S, minimize_s: float = 5.0,
                harness: Harness | None = None, watchdog: float | None = None,
                minimize_out_of_domain: bool = True) -> HarnessResult:
    """Fuzz one harness for `seconds` and/or `max_execs` executions (whichever comes first)."""
    if seconds is None and max_execs is None:
        raise ValueError("give seconds or max_execs")
    h = harness or make_harness(name)
    rng = random.Random(seed)
    h.mut = ByteMutator(rng, getattr(h, "max_len", 4096))
    cov = coverage if coverage is not None else LineCoverage()
    res = HarnessResult(h.name)
    corpus = h.seed_inputs()
    n_seeds = len(corpus)
    seen: set[str] = set()
    deadline = time.perf_counter() + seconds if seconds is not None else float("inf")
    limit = max_execs if max_execs is not None else float("inf")
    t_start = time.perf_counter()
    n = 0
    if watchdog is None:  # out of the domain, windows of 2**32 packets are expected: cut early
        watchdog = 0.25 if h.name == "engine_keyed_any" else WATCHDOG_S
    with Watchdog(watchdog) as wd:
        while n < limit:
            if time.perf_counter() >= deadline:
                break
            if n < n_seeds:  # every seed once, unmutated
                x = corpus[n]
            else:
                x = h.mutate(corpus[rng.randrange(len(corpus))], rng, corpus)
            n += 1
            traced = trace_every > 0 and n % trace_every == 0
            if traced:
                res.traced += 1
                t0 = time.perf_counter()
                wd.start, wd.active = t0, True
                before = len(cov.lines)
                sys.settrace(cov._global)
                try:
                    outcome, err = h.execute(x), None
                except (Crash, Hang) as e:
                    outcome, err = "", e
                finally:
                    sys.settrace(None)
                    wd.active = False
                dt = 0.0  # traced calls are slow by design: not timed
                new_lines = len(cov.lines) > before
            else:
                outcome, dt, err = _timed(h, wd, x)
                new_lines = False
            if dt > res.max_call_ms / 1000:
                res.max_call_ms = dt * 1000
            if err is None and dt > call_limit:
                err = _confirm_hang(h, wd, x, call_limit)
                if err is None:
                    res.slow_not_confirmed += 1
            if err is not None:
                _record(h, res, x, err, n, minimize_s, wd, minimize_out_of_domain)
                outcome = "crash" if isinstance(err, Crash) else "hang"
            res.outcomes[outcome] += 1
            if outcome not in seen or new_lines:
                seen.add(outcome)
                if err is None:
                    if len(corpus) < 4096:
                        corpus.append(x)
                    else:
                        corpus[rng.randrange(len(corpus))] = x
    res.executions = n
    res.seconds = time.perf_counter() - t_start
    res.corpus = len(corpus)
    res.extra.update(h.stats())
    if isinstance(h, EngineKeyed):
        res.extra["out_of_domain_executions"] = h.out_of_domain_execs
    return res


def hang_signature(err: Hang) -> str:
    """hang@file:function of the innermost trickles_kit frame the watchdog interrupted."""
    if err.__traceback__ is None:
        return f"hang@slow>{CALL_LIMIT_S * 1000:.0f}ms"
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "trickles_kit" in f.filename]
    if not frames:
        return "hang@?"
    return f"hang@{Path(frames[-1].filename).name}:{frames[-1].name}"


def _confirm_hang(h: Harness, wd: Watchdog, x, call_limit: float) -> Hang | None:
    """A slow call is a hang only if it is slow 3 times out of 3 on a fresh engine."""
    for _ in range(3):
        h.fresh()
        _, dt, err = _timed(h, wd, x)
        if isinstance(err, Hang):
            return err
        if dt <= call_limit:
            h.fresh()
            return None
    h.fresh()
    return Hang()


def _record(h: Harness, res: HarnessResult, x, err: BaseException, n: int, minimize_s: float,
            wd: Watchdog, minimize_out_of_domain: bool = True) -> None:
    in_domain = h.in_domain(x)
    if isinstance(err, Hang):
        sig = hang_signature(err)
        book = res.hangs if in_domain else res.out_of_domain
    else:
        assert isinstance(err, Crash)
        sig = err.signature
        book = res.crashes if in_domain else res.out_of_domain
    h.fresh()  # a crash or an interrupted call may leave the engine half-way
    f = book.get(sig)
    if f is None:
        f = book[sig] = Finding(sig, 0, n, in_domain, known_finding(sig))
        if f.known:  # already understood: keep the input, skip the minimisation
            f.repro = {"input_hex": h.to_bytes(x).hex(), "known": KNOWN_FINDINGS[f.known]["what"]}
        elif not in_domain and not minimize_out_of_domain:
            f.repro = {"input_hex": h.to_bytes(x).hex()}
        else:
            f.repro = _minimize(h, x, sig, minimize_s, wd)
        f.repro["detail"] = (err.detail if isinstance(err, Crash) else "")[-1500:]
    f.count += 1


def _signature_of(h: Harness, wd: Watchdog, x) -> str | None:
    h.fresh()
    _, _, err = _timed(h, wd, x)
    if err is None:
        return None
    if isinstance(err, Hang):
        return hang_signature(err)
    return err.signature


def _minimize(h: Harness, x, sig: str, budget: float, wd: Watchdog) -> dict:
    """Smallest input with the same signature (fresh engine each try), within `budget` s."""
    t_end = time.perf_counter() + budget
    old_limit = wd.limit
    wd.limit = min(old_limit, 0.2)
    try:
        reproduced = _signature_of(h, wd, x) == sig
        if isinstance(x, Spec):
            x = _minimize_spec(h, x, sig, t_end, wd)
        data = h.to_bytes(x)
        now = h.build(x)[1] if isinstance(x, Spec) else getattr(h, "now", None)
        if isinstance(h, EngineBase):
            raw = EngineRaw.__new__(EngineRaw)
            EngineBase.__init__(raw)
            raw.now = now

            def test(b: bytes) -> bool:
                raw.fresh()
                _, dt, err = _timed_call(wd, raw.feed, b, now, True)
                if sig.startswith("hang@"):
                    return isinstance(err, Hang) or dt > CALL_LIMIT_S
                return isinstance(err, Crash) and err.signature == sig

            shrink = EngineRaw.shrink_candidates
            keep_checksum = True
        else:
            def test(b: bytes) -> bool:
                return _signature_of(h, wd, b) == sig

            shrink = Harness.shrink_candidates
            keep_checksum = False
        changed = True
        while changed and time.perf_counter() < t_end:
            changed = False
            for cand in shrink(h, data):
                if time.perf_counter() >= t_end:
                    break
                if keep_checksum:
                    cand = fix_checksum(cand, CLIENT_IP, SERVER_IP)
                if len(cand) <= len(data) and cand != data and test(cand):
                    data = cand
                    changed = True
                    break
        out = {"reproduced_on_fresh_engine": reproduced, "input_hex": data.hex(),
               "input_len": len(data)}
        if now is not None:
            out["now"] = now
            out["python"] = ("import sys; sys.path.insert(0, 'tests'); "
                             "from helpers_security import make_server, CLIENT_IP; "
                             f"s = make_server(); s.receive(bytes.fromhex('{data.hex()}'), "
                             f"CLIENT_IP, {now!r}); print(dict(s.counters), s.last_error)")
        else:
            out["python"] = f"{getattr(h, 'name', '?')}(bytes.fromhex('{data.hex()}'))"
        if isinstance(x, Spec) and isinstance(h, EngineKeyed):
            t = h.templates[x.tmpl]
            out["changed_fields"] = {
                CONT_FIELDS[i]: x.fields[i] for i in range(16) if x.fields[i] != t.fields[i]}
            for attr in ("rtype", "sacks", "ucont", "ranges", "app", "dt", "flags", "bad_mac",
                         "havoc"):
                v, tv = getattr(x, attr), getattr(t, attr)
                if v != tv:
                    out.setdefault("changed", {})[attr] = v.hex() if isinstance(v, bytes) else v
        return out
    finally:
        wd.limit = old_limit
        h.fresh()


def _minimize_spec(h: EngineKeyed, x: Spec, sig: str, t_end: float, wd: Watchdog) -> Spec:
    """Revert each part of a Spec to its template while the crash persists."""
    t = h.templates[x.tmpl]
    attrs = ["havoc", "bad_mac", "keep_replay", "rtype", "flags", "rseq", "dt", "sacks", "ucont",
             "ranges", "app"]
    for attr in attrs:
        if time.perf_counter() >= t_end or getattr(x, attr) == getattr(t, attr):
            continue
        y = x.copy()
        setattr(y, attr, getattr(t, attr) if attr != "havoc" else None)
        if attr == "ranges" and _signature_of(h, wd, _with(y, ranges=[])) == sig:
            x = _with(y, ranges=[])
        elif _signature_of(h, wd, y) == sig:
            x = y
    for i in range(16):
        if time.perf_counter() >= t_end or x.fields[i] == t.fields[i]:
            continue
        y = x.copy()
        y.fields[i] = t.fields[i]
        if _signature_of(h, wd, y) == sig:
            x = y
    return x


def _with(x: Spec, **kw) -> Spec:
    y = x.copy()
    for k, v in kw.items():
        setattr(y, k, v)
    return y


# ------------------------------------------------------------------------------- forgery
FORGERY_OUTCOMES = ("accepted_unaltered", "accepted_other_genuine", "accepted_forged",
                    "rejected_mac", "rejected_key_epoch", "rejected_decode", "rejected_replay",
                    "rejected_nonce", "rejected_stale_or_future", "other")


def forgery(n: int, seed: int = 1) -> dict:
    """`n` mutations of valid requests, never re-sealed. None may be accepted with altered
    MAC-covered continuation bytes (continuation offsets 0..5 and 18..74) unless they are
    exactly the covered bytes of another continuation this server genuinely sealed.

    Ops: bit flips and byte replacements in the continuation (or, 25% of the time, anywhere in
    the payload), aligned and shifted splices from other genuine continuations (this and another
    connection), truncations (bytes deleted inside the continuation) and extensions (bytes
    inserted). The checksum is recomputed; the replay history is replaced only when an input
    got far enough to use it (MAC-rejected requests never touch it).
    """
    s = seeds()
    server = make_server()
    reason: list[str | None] = [None]
    orig_drop = server._drop

    def _drop(r, now, *a, **kw):
        reason[0] = r
        return orig_drop(r, now, *a, **kw)

    server._drop = _drop
    rng = random.Random(seed)
    bases = [(bytearray(seg), t, covered_bytes(seg[CONT_OFFSET : CONT_OFFSET + FULL_LEN]))
             for _, seg, t in s.requests]
    donors = [bytes(seg[CONT_OFFSET : CONT_OFFSET + FULL_LEN]) for _, seg, _ in s.requests]
    donors += s.other_conts
    genuine = s.genuine
    counts = Counter({k: 0 for k in FORGERY_OUTCOMES})
    ops = Counter()
    altered_total = 0
    forged_examples: list[str] = []
    internal = Counter()
    receive = server.receive
    ip = CLIENT_IP
    c0, c1 = CONT_OFFSET, CONT_OFFSET + FULL_LEN
    t0 = time.perf_counter()
    for _ in range(n):
        base, now, orig = bases[rng.randrange(len(bases))]
        d = bytearray(base)
        op = rng.randrange(8)
        anywhere = rng.random() < 0.25
        lo, hi = (28, len(d)) if anywhere else (c0, c1)
        if op <= 1:  # bit flips
            for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
                d[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
            ops["bitflip"] += 1
        elif op == 2:  # byte replacements
            for _ in range(rng.choice((1, 1, 2, 4, 16))):
                d[rng.randrange(lo, hi)] = rng.randrange(256)
            ops["replace"] += 1
        elif op == 3:  # aligned splice from another genuine continuation
            donor = donors[rng.randrange(len(donors))]
            a = rng.randrange(FULL_LEN)
            b = rng.randint(a + 1, FULL_LEN)
            d[c0 + a : c0 + b] = donor[a:b]
            ops["splice_aligned"] += 1
        elif op == 4:  # shifted splice (bytes of another field land here)
            donor = donors[rng.randrange(len(donors))]
            a = rng.randrange(FULL_LEN)
            ln = rng.randint(1, FULL_LEN - a)
            at = rng.randrange(FULL_LEN - ln + 1)
            d[c0 + at : c0 + at + ln] = donor[a : a + ln]
            ops["splice_shifted"] += 1
        elif op == 5:  # truncation inside the continuation
            at = rng.randrange(c0, c1)
            del d[at : at + rng.choice((1, 1, 2, 4, 8, 16, 40, 75))]
            ops["truncate"] += 1
        elif op == 6:  # extension inside the continuation
            at = rng.randrange(c0, c1 + 1)
            d[at:at] = rng.randbytes(rng.choice((1, 1, 2, 4, 8, 16)))
            ops["extend"] += 1
        else:  # the tail of the continuation cut off and replaced by the rest of the request
            at = rng.randrange(c0, c1)
            del d[at:c1]
            d += rng.randbytes(rng.randrange(0, 80))
            ops["cut_and_fill"] += 1
        d[16:18] = b"\0\0"
        d[16:18] = checksum(ip, SERVER_IP, d).to_bytes(2, "big")
        reason[0] = None
        out = receive(bytes(d), ip, now)
        cov = covered_bytes(d[c0:c1]) if len(d) >= c1 else None
        altered = cov != orig
        altered_total += altered
        r = reason[0]
        if out:
            if not altered:
                counts["accepted_unaltered"] += 1
            elif cov in genuine:
                counts["accepted_other_genuine"] += 1
            else:
                counts["accepted_forged"] += 1
                if len(forged_examples) < 10:
                    forged_examples.append(bytes(d).hex())
        elif r is None:
            counts["other"] += 1  # terminated: a valid request that emits nothing
        elif r == "mac":
            counts["rejected_mac"] += 1
        elif r == "key_epoch":
            counts["rejected_key_epoch"] += 1
        elif r.startswith("decode."):
            counts["rejected_decode"] += 1
        elif r == "replay":
            counts["rejected_replay"] += 1
        elif r == "nonce":
            counts["rejected_nonce"] += 1
        elif r in ("stale", "future"):
            counts["rejected_stale_or_future"] += 1
        else:
            counts["other"] += 1
            if r.startswith("internal."):
                internal[r] += 1
        if server.replay._count:
            fresh_replay(server)
    dt = time.perf_counter() - t0
    return {"mutations": n, "seconds": round(dt, 2), "mutations_per_s": round(n / dt),
            "outcomes": dict(counts), "ops": dict(ops),
            "altered_mac_covered_bytes": altered_total,
            "accepted_forged": counts["accepted_forged"], "forged_examples_hex": forged_examples,
            "internal_errors": dict(internal), "handler_error": server.counters["handler_error"],
            "drop_reasons": {k: v for k, v in sorted(server.counters.items())
                             if k.startswith("drop.")},
            "base_requests": len(bases), "splice_donors": len(donors),
            "genuine_continuations": len(genuine)}


# ------------------------------------------------------------------------------- campaign
# share of the executions (and of the seconds) each harness gets in a campaign
WEIGHTS = {"decode_segment": 0.06, "decode_segment_addr": 0.06, "decode_request": 0.08,
           "decode_response": 0.06, "decode_chunks": 0.05, "decode_continuation": 0.04,
           "engine_raw": 0.25, "engine_keyed": 0.38, "engine_keyed_any": 0.02}


FULL_EXECUTIONS = 1_000_000
# --quick: every harness runs (each gets its share, at least one execution) and the forgery
# check runs, in seconds; a smoke run that keeps the script working, not a campaign
QUICK_EXECUTIONS, QUICK_FORGERY = 2_000, 1_000
# ... and a slow call is a hang only past 10x the campaign's limit, as in tests/wire/test_fuzz.py: a
# smoke run shares a busy CI machine, where 50 ms is a speed, not a behaviour
QUICK_CALL_LIMIT_S = 10 * CALL_LIMIT_S


def campaign(executions: int, seconds: float | None, harnesses: list[str], seed: int,
             trace_every: int, log=print, call_limit: float = CALL_LIMIT_S) -> dict:
    cov = LineCoverage()
    wsum = sum(WEIGHTS[h] for h in harnesses)
    results = {}
    for i, name in enumerate(harnesses):
        w = WEIGHTS[name] / wsum
        res = run_harness(name, seconds=seconds * w if seconds else None,
                          max_execs=max(1, int(executions * w)) if executions else None,
                          seed=seed * 1000 + i, trace_every=trace_every, coverage=cov,
                          call_limit=call_limit)
        results[name] = res.to_json()
        log(f"{name:22s} {res.executions:>9,d} execs {res.seconds:7.1f} s "
            f"{res.executions / max(res.seconds, 1e-9):>8,.0f}/s  crashes "
            f"{sum(f.count for f in res.crashes.values())} (unknown {res.unknown_crashes}) "
            f"hangs {res.hang_count} out-of-domain {len(res.out_of_domain)}")
    return {"harnesses": results, "coverage": cov.report()}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=20).stdout.strip()
    except Exception:
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--executions", type=int, default=None,
                    help="fuzz executions in total, shared by the harnesses (0: none; default "
                         f"{FULL_EXECUTIONS:,}, quick {QUICK_EXECUTIONS:,})")
    ap.add_argument("--seconds", type=float, default=None,
                    help="time cap in total, shared the same way (whichever comes first)")
    ap.add_argument("--forgery", type=int, default=None,
                    help=f"forgery mutations (0: skip; default 0, quick {QUICK_FORGERY:,})")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: every harness and the forgery check, a few seconds "
                         "(finds little; CI runs it so the script keeps working)")
    ap.add_argument("--harness", action="append", choices=HARNESSES,
                    help="only these harnesses (repeatable; default all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trace-every", type=int, default=64,
                    help="one execution in N runs under sys.settrace (coverage + feedback)")
    add_output_args(ap, "fuzz_campaign.json")
    a = ap.parse_args(argv)
    if a.executions is None:
        a.executions = QUICK_EXECUTIONS if a.quick else FULL_EXECUTIONS
    if a.forgery is None:
        a.forgery = QUICK_FORGERY if a.quick else 0
    harnesses = a.harness or list(HARNESSES)
    call_limit = QUICK_CALL_LIMIT_S if a.quick else CALL_LIMIT_S
    t0 = time.time()
    load0 = os.getloadavg()
    doc: dict = {
        "meta": {
            "command": " ".join(shlex.quote(x) for x in [
                ".venv/bin/python", "benchmarks/fuzz_campaign.py", *(argv or sys.argv[1:])]),
            "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "mode": "quick" if a.quick else "full",
            "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "loadavg_at_start": load0,
            "git_commit": _git("rev-parse", "HEAD"),
            "uncommitted_trickles_kit": _git("status", "--porcelain", "trickles_kit"),
            "fuzzer": "own mutation fuzzer (benchmarks/fuzz_campaign.py): havoc byte mutations "
                      "and structured key-holding mutations; feedback = new outcome or new "
                      "line under sampled sys.settrace",
            "call_limit_ms": call_limit * 1000, "watchdog_s": WATCHDOG_S,
            "seed": a.seed, "trace_every": a.trace_every,
            "known_findings": {k: v["what"] for k, v in KNOWN_FINDINGS.items()},
        }
    }
    if a.executions or a.seconds:
        doc.update(campaign(a.executions, a.seconds, harnesses, a.seed, a.trace_every,
                            call_limit=call_limit))
        hs = doc["harnesses"].values()
        doc["totals"] = {
            "executions": sum(h["executions"] for h in hs),
            "seconds": round(sum(h["seconds"] for h in hs), 1),
            "crashes": sum(h["crashes"] for h in hs),
            "unknown_crashes": sum(h["unknown_crashes"] for h in hs),
            "hangs": sum(h["hangs"] for h in hs),
            "out_of_domain_findings": sorted({f["signature"] for h in hs
                                              for f in h["out_of_domain_findings"]}),
            "crash_signatures": sorted({f["signature"] for h in hs for f in h["crash_list"]}),
            "distinct_drop_reasons": sorted({r for h in hs for r in h.get("drop_reasons", {})}),
        }
        t = doc["totals"]
        t["executions_per_s"] = round(t["executions"] / max(t["seconds"], 1e-9))
        print(f"total {t['executions']:,d} executions in {t['seconds']} s; crashes "
              f"{t['crashes']} (unknown {t['unknown_crashes']}), hangs {t['hangs']}; "
              f"coverage {doc['coverage']['server_side_percent']}% of server-side lines")
    if a.forgery:
        doc["forgery"] = f = forgery(a.forgery, a.seed)
        print(f"forgery: {f['mutations']:,d} mutations in {f['seconds']} s "
              f"({f['mutations_per_s']:,d}/s): {f['outcomes']}")
    doc["meta"]["loadavg_at_end"] = os.getloadavg()
    doc["meta"]["wall_seconds"] = round(time.time() - t0, 1)
    out = write_result(a.out, doc, indent=1, default=str)
    print(f"wrote {out}")
    bad = doc.get("totals", {}).get("unknown_crashes", 0) + doc.get("totals", {}).get("hangs", 0)
    bad += doc.get("forgery", {}).get("accepted_forged", 0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
