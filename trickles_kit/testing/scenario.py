"""Scripted scenarios for one ServerEngine, in the spirit of packetdrill, on a virtual clock.

A scenario plays a minimal, fully scripted client against ONE `ServerEngine` (serving the
`Generated` handler, "GEN <size> <seed>") and checks exactly what the server emits. There is no
network and no real time: the clock only moves when a line says so.

Format — one directive per line, `#` starts a comment, values with spaces go in double quotes::

    [TIME] config KEY=VALUE ...          # ServerConfig fields, before the first request
    [TIME] > REQUEST OPTIONS ...         # send one request to the server (TIME moves the clock)
    [TIME] < PACKET ... [; PACKET ...]   # the next emitted packet(s) must match, in order
    [TIME] < none                        # the server emitted nothing (more) for this request
    [TIME] ! EVENT [FIELD=VALUE ...]     # the server reported this event for this request
    [TIME] ! -EVENT                      # ... and did not report this one
    [TIME] ! app=SYN|REQUEST|FIN         # the application handler saw this minisocket kind
    [TIME] ! -app=REQUEST                # ... or did not

TIME is `+0.020` (relative to the previous line) or `1.5` (absolute seconds); omitted means `+0`.
The server answers instantly, so `<` and `!` lines may only carry `+0`.

Requests (`>`)::

    syn app="GEN 100000 7" [range=0:1448] [pad=N|auto]  SYN (with data when app/range given);
                                                  pad defaults to auto (the real client's rule);
                                                  pad fills the ignored ucont field so the answer
                                                  passes the 3x anti-amplification limit
    ack=K                                         echo the FULL continuation of packet K
        [type=normal|slowstart|fin]               request type (fin also sets the TCP FIN flag)
        [sack=L-R,L-R...]                         SACK blocks; summaries are computed honestly from
                                                  the stored nonces p_j of received packets
        [sack=L-R:0xHEX]                          ... or given explicitly
        [lie]                                     allow blocks that claim packets never received
                                                  (their unknown nonces are guessed as 0)
        [range=A:B,C:D]                           byte ranges asked for, one per output slot
        [app="..."] [ucont=K|none]                request bytes; user continuation (default: the
                                                  one packet K carried)
        [tamper=FIELD[,FIELD]]                    flip the lowest bit of a continuation field on
                                                  the wire (server-owned fields are MAC-covered)
        [client_state=N] [parent=N]               rewrite client-owned fields (not MAC-covered)
    replay                                        resend the previous request's bytes exactly
    from=IP:PORT                                  (any request) send from another client address

Packets (`<`), all keys optional, checked exactly against the next emitted packet::

    pkt=N ack=N flags=SA|A|FA            TCP seq (= packet number, also the continuation's seq),
                                         TCP ack (= the request's k) and flags (S F R P A)
    type=FULL1|FULL2|MINIMAL state=NORMAL|RECOVERY|BOOTSTRAP first_child=N
    tcp_base=N start_cwnd=N ssthresh=N first_loss=N first_bootstrap_seq=N (alias fbs=N)
    timestamp=MS mrtt=N key_epoch=N      server clock (ms), smoothed RTT x8 (ms), key epoch
    siblings=N position=N                the response header fields
    data=A:B|none finhint=N|none         DATA chunk byte range; FINHINT chunk
    kind=initial|continue|split|retransmit|bootstrap|syn|fin   the server's event for the packet
    cwnd=N                               the window the server's event reports for the packet
    lost                                 (not a check) the client never receives this packet:
                                         its continuation and nonce are not stored

A MINIMAL continuation carries only type/seq/firstChild on the wire: the congestion fields of a
retransmission (state RECOVERY, its epoch) are visible only in the server's event for it, so
check them on an event line, e.g. `! retransmit pkt=4 state=RECOVERY tcp_base=1`.

Every packet a request produced must be matched by a `<` line before the next `>` line (or the
end of the script); extra packets are a failure. The run stops at the first failure.

Run files with ``python -m trickles_kit.testing.scenario [-v] FILE...`` (no FILE: every scenario
shipped in ``trickles_kit/scenarios``); ``-v`` prints a transcript of every step, and
``--explore`` accepts unmatched packets, to see what the server does before writing expectations.

A malformed script (bad syntax, a value out of range, a request the scripted client cannot
build) is reported in one line on stderr, ``FILE:LINE: message``, and the run exits with status 2
(1: checks failed, 0: all passed); nothing is allocated before a value is checked. Limits: a
script is at most `MAX_SCRIPT_BYTES` (1 MiB) of UTF-8; every request must fit one UDP datagram
(`MAX_SEGMENT`, 65,507 bytes), so ``pad`` is at most 65,507 bytes less the request; ``config``
values are finite and non-negative, ``replay_entries`` and ``state_cache`` at most 2^20 (the
replay table is allocated whole: 12 MiB); 32-bit fields (``client_state``, ``parent``, SACK
and range bounds) and 16-bit ports are checked against their width.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from trickles_kit.core.statecache import ENV as STATE_CACHE_ENV
from trickles_kit.core.statecache import entries_from_text, set_default_entries
from trickles_kit.net.pcap import PcapWriter
from trickles_kit.testing.scenario_checks import Check, Emitted, ScenarioResult, Stored
from trickles_kit.testing.scenario_runner import (
    CLIENT,
    CLIENT_ISN,
    CONT_FIELDS,
    MAX_SEGMENT,
    SECRET,
    SERVICE,
    Runner,
)
from trickles_kit.testing.scenario_script import (
    MAX_SCRIPT_BYTES,
    MAX_TABLE,
    Line,
    ScenarioError,
    parse_scenario,
)

# the runner's pieces live in scenario_script (the language), scenario_checks (results and
# comparisons) and scenario_runner (the scripted client); their public names stay importable here
__all__ = ["CLIENT", "CLIENT_ISN", "CONT_FIELDS", "MAX_SCRIPT_BYTES", "MAX_SEGMENT", "MAX_TABLE",
           "SECRET", "SERVICE", "Check", "Emitted", "Line", "Runner", "ScenarioError",
           "ScenarioResult", "Stored", "main", "parse_scenario", "read_script", "run_file",
           "run_scenario", "scenario_paths"]


# ---------------------------------------------------------------------------- entry points
def run_scenario(text: str, name: str = "<scenario>", verbose: bool = False,
                 explore: bool = False, pcap: PcapWriter | None = None) -> ScenarioResult:
    """Parse and run one script; syntax errors become a failing check (never an exception).

    `explore` accepts packets no '<' line matched (they count as received): with `verbose`, a
    way to see what the server does before writing the expectations.
    """
    try:
        lines = parse_scenario(text)
    except ScenarioError as e:
        return ScenarioResult(name, [Check(e.line, "(syntax)", False, e.message)], error=e)
    return Runner(name, verbose, explore, pcap).run(lines)


def read_script(path: str | Path) -> str:
    """The script's text: at most `MAX_SCRIPT_BYTES` of UTF-8 (ScenarioError otherwise, line
    0 for the file as a whole); OSError when it cannot be read."""
    with open(path, "rb") as f:
        data = f.read(MAX_SCRIPT_BYTES + 1)
    if len(data) > MAX_SCRIPT_BYTES:
        raise ScenarioError(0, f"larger than {MAX_SCRIPT_BYTES} bytes: not a scenario script")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(data.count(b"\n", 0, e.start) + 1,
                            f"not UTF-8 text (byte 0x{data[e.start]:02x})") from None


def run_file(path: str | Path, verbose: bool = False, explore: bool = False) -> ScenarioResult:
    """Run one script file; a malformed one gives a failed result with `error` set."""
    p = Path(path)
    try:
        text = read_script(p)
    except ScenarioError as e:
        return ScenarioResult(p.name, [Check(e.line, "(file)", False, e.message)], error=e)
    return run_scenario(text, p.name, verbose, explore)


def scenario_paths() -> list[Path]:
    """The scenario files shipped in the trickles_kit package (trickles_kit/scenarios/*.txt)."""
    root = resources.files("trickles_kit") / "scenarios"
    return sorted(Path(str(root)).glob("*.txt"))


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}" if line > 0 else str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """PASS/FAIL per file on stdout; a malformed script: one line on stderr. Exit status 0 (all
    passed), 1 (checks failed) or 2 (a script is malformed or could not be read or run)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m trickles_kit.testing.scenario [-v] [--explore] [FILE...]\n"
              "Runs Trickles server scenarios (no FILE: the shipped ones); prints PASS/FAIL.\n"
              "  -v           print a transcript of every request, packet and event\n"
              "  --explore    accept packets no '<' line matches (to draft a new script)\n"
              "  --traceback  let an internal error raise (instead of one line on stderr)\n"
              "Exit status: 0 all passed, 1 checks failed, 2 a script is malformed.")
        return 0
    try:  # (an entry point: only entry points read settings from the environment)
        set_default_entries(entries_from_text(os.environ.get(STATE_CACHE_ENV, "")))
    except ValueError as e:
        print(f"scenario: {e}", file=sys.stderr)
        return 2
    verbose = "-v" in args
    explore = "--explore" in args
    traceback = "--traceback" in args
    args = [a for a in args if a not in ("-v", "--explore", "--traceback")]
    paths = [Path(a) for a in args] or scenario_paths()
    failed = broken = 0
    result: ScenarioResult | None = None
    for i, p in enumerate(paths):
        if i:
            result = None
            # the previous file's engine (its replay table: 12 MiB by default) sits in a cycle
            # with its handler: free it before the next one, so a run's memory is one file's
            gc.collect()
        if verbose:
            print(f"== {p}")
        try:
            result = run_file(p, verbose, explore)
        except OSError as e:
            print(f"{p}: cannot read: {e.strerror or e}", file=sys.stderr)
            broken += 1
            continue
        except Exception as e:  # not the script's fault: a bug here or in the server
            if traceback:
                raise
            where = _where(p, getattr(e, "scenario_line", 0))
            print(f"{where}: internal error: {type(e).__name__}: {e} (--traceback for details)",
                  file=sys.stderr)
            broken += 1
            continue
        if result.error is not None:
            print(f"{_where(p, result.error.line)}: {result.error.message}", file=sys.stderr)
            broken += 1
            continue
        print(result.report())
        failed += not result.passed
    return 2 if broken else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
