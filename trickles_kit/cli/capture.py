"""`trickles decode`, `trickles replay` and `trickles capture`: captures on the command line.

Registered by `trickles_kit.cli` through `add_capture_parsers(subparsers)`; every command sets
`func`, returns an exit status and reports a bad input in one line on stderr with status 2.

`trickles decode` prints packets as it reads the capture (`decode.PacketStream`): its memory is
bounded whatever the capture's size, and a corrupt record met on the way ends the output there
(the one-line error, status 2). With --events, and for `trickles replay`, the packets of the
whole capture are decoded first (pairing answers with requests needs them all): memory grows
with the number of Trickles packets, not with the file's size. `trickles decode --format parquet
-o OUT/` writes the packet table (and with --events the events) as Parquet partitioned by run
(`capture.parquet`; packets streamed chunk by chunk, in bounded memory without --events).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Iterable
from typing import TextIO

from trickles_kit.capture.decode import EVENT_FIELDS, ROW_FIELDS, PacketStream, decode_pcap
from trickles_kit.capture.live import DEFAULT_FILTER, LiveCapture, LiveCaptureError
from trickles_kit.capture.pcapio import PcapError, TruncatedCaptureWarning
from trickles_kit.capture.replay import paced
from trickles_kit.cli.wire import load_secret
from trickles_kit.core.events import Event
from trickles_kit.wire.continuation import STATE_NAMES, TYPE_NAMES

_FLAG_LETTERS = ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P"), (0x10, "A"))


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < v < 65536:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {v}")
    return v


def _speed(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v != v or v < 0:
        raise argparse.ArgumentTypeError("speed must be >= 0 (0 or inf: as fast as possible)")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError("duration must be > 0 seconds")
    return v


def add_capture_parsers(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "decode", help="decode a pcap/pcapng of Trickles traffic into packets or events",
        description="Read a capture (pcap or pcapng; raw IP, Ethernet, Linux cooked, loopback "
                    "link types) and print one line per Trickles packet, or with --events the "
                    "protocol events the server produced (the engine's own event vocabulary). "
                    "Packets are printed as the capture is read, in bounded memory whatever its "
                    "size; --events keeps the capture's Trickles packets in memory.",
    )
    d.add_argument("pcap", metavar="PCAP", help="the capture file")
    d.add_argument("--secret-file", metavar="F",
                   help="hex master secret: adds MAC and nonce verdicts (mac_ok, nonce_ok) and "
                        "tells MAC, nonce and stale drops apart")
    d.add_argument("--service-port", type=_port, metavar="P",
                   help="the Trickles service port (default: learned from the SYNs)")
    d.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table",
                   help="table (readable, default), csv, json (one JSON object per line), or "
                        "parquet (files under --output; needs pyarrow: the parquet extra)")
    d.add_argument("-o", "--output", metavar="DIR",
                   help="with --format parquet: the directory to write packets/run=RUN/ "
                        "(and with --events events/run=RUN/) under")
    d.add_argument("--run", metavar="NAME",
                   help="with --format parquet: the run's partition name (default: the "
                        "capture's file name)")
    d.add_argument("--events", action="store_true", help="print events instead of packets")
    d.add_argument("--no-checksums", action="store_true",
                   help="do not verify TCP checksums (faster on large captures)")
    d.set_defaults(func=cmd_decode)

    r = sub.add_parser(
        "replay", help="print a capture's events at the pace they happened",
        description="Decode a capture and print its protocol events in time: --speed 2 plays "
                    "twice as fast, --speed 0 prints everything at once.",
    )
    r.add_argument("pcap", metavar="PCAP", help="the capture file")
    r.add_argument("--speed", type=_speed, default=1.0,
                   help="time scale (default 1 = real time; 0 or inf = no waiting)")
    r.add_argument("--secret-file", metavar="F", help="hex master secret (MAC/nonce verdicts)")
    r.add_argument("--service-port", type=_port, metavar="P", help="the Trickles service port")
    r.add_argument("--format", choices=("text", "json"), default="text",
                   help="text (one readable line per event, default) or json (JSON lines)")
    r.add_argument("--packets", action="store_true", help="replay packets instead of events")
    r.set_defaults(func=cmd_replay)

    c = sub.add_parser(
        "capture", help="record live traffic with tcpdump (root or CAP_NET_RAW)",
        description="Run tcpdump on an interface and write a pcap until Ctrl-C or --duration. "
                    "Decode the result with `trickles decode`.",
    )
    c.add_argument("-o", "--output", required=True, metavar="FILE", help="pcap file to write")
    c.add_argument("--interface", "-i", default="lo", help="interface (default lo)")
    c.add_argument("--duration", type=_seconds, metavar="S", help="stop after S seconds")
    c.add_argument("--filter", default=None,
                   help="pcap filter (default: 'ip proto 253 or udp or tcp')")
    c.add_argument("--snaplen", type=int, default=0, help="bytes kept per packet (0 = all)")
    c.set_defaults(func=cmd_capture)


# ---------------------------------------------------------------------------- helpers
def _fail(cmd: str, err: BaseException | str) -> int:
    print(f"trickles {cmd}: {err}", file=sys.stderr)
    return 2


def _secret(path: str | None) -> bytes | None:
    if path is None:
        return None

    try:
        return load_secret(path, create=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such secret file") from None
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None


def _decode(cmd: str, args: argparse.Namespace, events: bool):
    """(capture, None) or (None, exit status) after printing the one-line error."""

    try:
        secret = _secret(args.secret_file)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncatedCaptureWarning)
            cap = decode_pcap(args.pcap, secret=secret, service_port=args.service_port,
                              events=events,
                              checksums=not getattr(args, "no_checksums", False))
    except (PcapError, ValueError) as e:
        return None, _fail(cmd, e)
    if cap.warning:
        print(f"trickles {cmd}: warning: {cap.warning}", file=sys.stderr)
    return cap, None


def flags_text(flags: int) -> str:
    return "".join(ch for bit, ch in _FLAG_LETTERS if flags & bit) or "."


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("ok" if ok else "BAD")


def packet_info(r) -> str:
    """The variable part of a packet's table line."""
    parts = []
    if r.direction == "request":
        if r.cont_seq is not None:
            parts.append(f"k={r.cont_seq} base={r.tcp_base} c0={r.start_cwnd} "
                         f"ss={r.ssthresh} {STATE_NAMES.get(r.state, r.state)}")
        if r.sacks:
            parts.append("sack=" + ",".join(f"{a}-{b}" for a, b, _ in r.sacks))
        if r.ranges:
            parts.append(f"ranges={len(r.ranges)}")
        if r.app_len:
            parts.append(f"app={r.app_len}B")
    elif r.cont_type is not None:
        parts.append(f"{r.position + 1}/{r.siblings}" if r.siblings is not None else "")
        if r.cont_type != 0:
            parts.append(f"base={r.tcp_base} c0={r.start_cwnd} ss={r.ssthresh} "
                         f"{STATE_NAMES.get(r.state, r.state)}")
        if r.data_start is not None:
            parts.append(f"data={r.data_start}+{r.data_len}")
        if r.fin:
            parts.append("FIN")
        if r.finhint is not None:
            parts.append(f"finhint={r.finhint}")
    if r.mac_ok is not None:
        parts.append(f"mac={_verdict(r.mac_ok)}")
    if r.nonce_ok is not None:
        parts.append(f"nonce={_verdict(r.nonce_ok)}")
    if r.error:
        parts.append(f"ERROR {r.error}")
    return " ".join(p for p in parts if p)


PACKETS_TABLE_HEADER = (f"{'#':>6} {'time':>11} {'':1} {'source':>21}   {'destination':<21} "
                        f"{'flags':<5} {'seq':>10} {'ack':>10} {'type':<9} info\n")


def write_packets_table(rows: list, out: TextIO) -> None:
    out.write(PACKETS_TABLE_HEADER)
    write_packet_lines(rows, out, rows[0].t if rows else 0.0)


def write_packet_lines(rows: Iterable, out: TextIO, t0: float) -> None:
    """The table lines of `rows` (times relative to `t0`), without the header."""
    for r in rows:
        arrow = ">" if r.direction == "request" else "<"
        what = r.req_type if r.direction == "request" else (
            TYPE_NAMES.get(r.cont_type, "?") if r.cont_type is not None else "?")
        out.write(f"{r.index:>6} {r.t - t0:>11.6f} {arrow:1} {f'{r.src}:{r.sport}':>21} > "
                  f"{f'{r.dst}:{r.dport}':<21} {flags_text(r.flags):<5} {r.seq:>10} {r.ack:>10} "
                  f"{what or '?':<9} {packet_info(r)}\n")


def _detail_text(detail: dict) -> str:
    return " ".join(f"{k}={json.dumps(v, separators=(',', ':')) if not isinstance(v, str) else v}"
                    for k, v in detail.items())


def event_line(e: Event, t0: float = 0.0) -> str:
    line = (f"{e.t - t0:>11.6f} {e.side:<6} {e.kind:<14} pkt={e.pkt} ack={e.ack} cwnd={e.cwnd} "
            f"ssthresh={e.ssthresh} base={e.tcp_base} {STATE_NAMES.get(e.state, e.state)}")
    if e.detail:
        line += " " + _detail_text(e.detail)
    return line


def write_events_table(events: list[Event], out: TextIO) -> None:
    t0 = events[0].t if events else 0.0
    out.write(f"{'time':>11} {'side':<6} {'kind':<14} {'conn':<16} {'pkt':>8} {'ack':>8} "
              f"{'cwnd':>5} {'ssthresh':>8} {'base':>8} {'state':<9} detail\n")
    for e in events:
        out.write(f"{e.t - t0:>11.6f} {e.side:<6} {e.kind:<14} {e.conn_id:016x} {e.pkt:>8} "
                  f"{e.ack:>8} {e.cwnd:>5} {e.ssthresh:>8} {e.tcp_base:>8} "
                  f"{STATE_NAMES.get(e.state, str(e.state)):<9} {_detail_text(e.detail)}\n")


def _plain(v):
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def row_json(r) -> str:
    return json.dumps({k: _plain(v) for k, v in r.as_dict().items()}, separators=(",", ":"))


def write_csv(records: Iterable[dict], fieldnames: tuple, out: TextIO) -> None:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(fieldnames)
    for rec in records:
        w.writerow(csv_cells(rec, fieldnames))


def csv_cells(rec: dict, fieldnames: tuple) -> list:
    cells = []
    for f in fieldnames:
        v = _plain(rec[f])
        if v is None:
            v = ""
        elif isinstance(v, list | dict):
            v = json.dumps(v, separators=(",", ":"))
        cells.append(v)
    return cells


class PacketWriter:
    """Packet rows written batch by batch, exactly as `write_capture` writes a whole capture:
    the header (table, csv) on creation, `rows(batch)` for each batch, `end(capture)` for the
    table's summary."""

    def __init__(self, fmt: str, out: TextIO) -> None:
        self.fmt, self.out, self.fields = fmt, out, ROW_FIELDS
        self.t0: float | None = None
        if fmt == "table":
            out.write(PACKETS_TABLE_HEADER)
        elif fmt == "csv":
            self._csv = csv.writer(out, lineterminator="\n")
            self._csv.writerow(ROW_FIELDS)

    def rows(self, rows: list) -> None:
        if self.fmt == "table":
            if self.t0 is None and rows:
                self.t0 = rows[0].t
            write_packet_lines(rows, self.out, self.t0 or 0.0)
        elif self.fmt == "csv":
            self._csv.writerows(csv_cells(r.as_dict(), self.fields) for r in rows)
        else:
            self.out.writelines(row_json(r) + "\n" for r in rows)

    def end(self, cap) -> None:
        if self.fmt == "table":
            self.out.write(_summary_lines(cap))


def _summary_lines(cap) -> str:
    return "-- " + cap.summary().replace("\n", "\n-- ") + "\n"


def write_capture(cap, fmt: str, events: bool, out: TextIO) -> None:
    """A decoded `Capture` as `trickles decode` prints it (`fmt`: table, csv or json; its
    events or its packets). `trickles decode` without --events streams the same output
    (`PacketWriter`) instead of decoding the whole capture first."""
    if events:
        if fmt == "table":
            write_events_table(cap.events, out)
        elif fmt == "csv":
            write_csv(({f: getattr(e, f) for f in EVENT_FIELDS} for e in cap.events),
                      EVENT_FIELDS, out)
        else:
            for e in cap.events:
                out.write(e.to_json() + "\n")
        if fmt == "table":
            out.write(_summary_lines(cap))
        return
    w = PacketWriter(fmt, out)
    w.rows(cap.packets)
    w.end(cap)


def _emit(write, out: TextIO) -> int:
    """Run `write(out)`; a closed pipe (`| head`) is not an error."""
    try:
        write(out)
        out.flush()
    except BrokenPipeError:
        # the reader went away: send what Python still flushes at exit to /dev/null
        with contextlib.suppress(OSError):
            sys.stdout = io.TextIOWrapper(open(os.devnull, "wb"))  # noqa: SIM115
    return 0


# ---------------------------------------------------------------------------- commands
def cmd_decode(args: argparse.Namespace) -> int:
    if args.format == "parquet":
        return _parquet_decode(args)
    if not args.events:
        return _stream_decode(args)
    cap, status = _decode("decode", args, events=True)
    if cap is None:
        return status
    return _emit(lambda out: write_capture(cap, args.format, True, out), sys.stdout)


def _stream_decode(args: argparse.Namespace) -> int:
    """`trickles decode` of packets: rows are written batch by batch as the capture is read, so
    memory stays bounded however large the capture (`PacketStream`). A corrupt record met on the
    way ends the output there: one line on stderr, status 2."""

    try:
        secret = _secret(args.secret_file)
        stream = PacketStream(args.pcap, secret=secret, service_port=args.service_port,
                              checksums=not args.no_checksums)
    except (PcapError, ValueError) as e:
        return _fail("decode", e)
    failed: list[PcapError] = []

    def write(out: TextIO) -> None:
        w = PacketWriter(args.format, out)
        with stream, warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncatedCaptureWarning)
            try:
                for rows in stream:
                    w.rows(rows)
            except PcapError as e:
                failed.append(e)
                return
        cap = stream.capture
        if cap.warning:
            print(f"trickles decode: warning: {cap.warning}", file=sys.stderr)
        w.end(cap)

    status = _emit(write, sys.stdout)
    return _fail("decode", failed[0]) if failed else status


def _parquet_decode(args: argparse.Namespace) -> int:
    """`--format parquet`: the tables as Parquet files under --output (`capture.parquet`)."""
    from trickles_kit.capture import parquet  # lazy: numpy/pyarrow only for Parquet

    if not args.output:
        return _fail("decode", "--format parquet needs --output DIR")
    if parquet.arrow_or_none() is None:
        return _fail("decode", parquet.PARQUET_HINT)
    try:
        secret = _secret(args.secret_file)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncatedCaptureWarning)
            res = parquet.write_parquet(args.pcap, args.output, secret=secret,
                                        service_port=args.service_port, run=args.run,
                                        events=args.events, checksums=not args.no_checksums)
    except (PcapError, ValueError) as e:
        return _fail("decode", e)
    cap = res["capture"]
    if cap.warning:
        print(f"trickles decode: warning: {cap.warning}", file=sys.stderr)
    print(f"{res['packets']} packets" + (f", {res['events']} events" if args.events else "")
          + " -> " + ", ".join(str(f) for f in res["files"]))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    cap, status = _decode("replay", args, events=not args.packets)
    if cap is None:
        return status
    items = cap.packets if args.packets else cap.events
    t0 = items[0].t if items else 0.0
    out = sys.stdout

    def write(out: TextIO) -> None:
        for item in paced(items, args.speed):
            if args.packets:
                if args.format == "json":
                    out.write(row_json(item) + "\n")
                else:
                    arrow = ">" if item.direction == "request" else "<"
                    out.write(f"{item.t - t0:>11.6f} {arrow} {item.src}:{item.sport} > "
                              f"{item.dst}:{item.dport} {flags_text(item.flags)} seq={item.seq} "
                              f"ack={item.ack} {packet_info(item)}\n")
            elif args.format == "json":
                out.write(item.to_json() + "\n")
            else:
                out.write(event_line(item, t0) + "\n")
            out.flush()

    try:
        return _emit(write, out)
    except KeyboardInterrupt:
        return 130


def cmd_capture(args: argparse.Namespace) -> int:
    import signal

    try:
        lc = LiveCapture(args.interface, args.output,
                         args.filter if args.filter is not None else DEFAULT_FILTER,
                         args.snaplen)
        lc.start()
    except (LiveCaptureError, ValueError) as e:
        return _fail("capture", e)
    until = f"for {args.duration:g} s" if args.duration else "until Ctrl-C"
    print(f"trickles capture: {args.interface} -> {args.output} ({until})", file=sys.stderr,
          flush=True)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    old = signal.signal(signal.SIGTERM, on_term)
    end = None if args.duration is None else time.monotonic() + args.duration
    try:
        while not stop and lc.running and (end is None or time.monotonic() < end):
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        died = not lc.running and lc.proc is not None
        stats = lc.stop()
    n = stats.get("captured")
    dropped = stats.get("dropped_by_kernel", 0)
    print(f"trickles capture: {n if n is not None else '?'} packets captured"
          + (f", {dropped} dropped by the kernel" if dropped else ""), file=sys.stderr)
    if died and args.duration is not None and n is None:
        return _fail("capture", "tcpdump stopped unexpectedly: " + " ".join(lc.stderr_lines))
    return 0


__all__ = ["add_capture_parsers", "cmd_capture", "cmd_decode", "cmd_replay"]
