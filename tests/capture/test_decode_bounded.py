"""Issue 20, build item 7 (audit item 8): `trickles decode` of a large capture runs in bounded
memory, and its streamed output is the output of the whole-capture path.

The audit's case: a 1 GB sparse pcap took 1.06 GB of memory (the reader mapped the file and
every page it walked stayed resident; a huge record was copied whole). Here each large capture
is a sparse file of a few hundred MB (a few blocks on disk) around the real frames of a
reference capture; `trickles decode` runs in a subprocess and its peak RSS (VmHWM from
/proc/PID/status, read at exit) is compared with the same command on the small capture.

Bound: peak RSS at most ``BOUND_MIB`` (24 MiB) above the small capture's, for every file size:
the reader holds a 2 MiB window and one record, the decoder one batch of rows. Before the
change: +300 to +600 MB for these files, growing with the file.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from wire_helpers import PEAK_RSS_DRIVER

from trickles_kit.capture import decode_pcap, read_pcap
from trickles_kit.capture.pcapio import LINKTYPE_EN10MB, MAX_RECORD, PcapReader
from trickles_kit.cli import main as cli_main
from trickles_kit.cli.capture import write_capture

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = sorted((ROOT / "captures").glob("*.pcap"))
JUNK = 300 << 20  # sparse bytes in each large capture
BOUND_MIB = 24
ETH = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00"  # Ethernet header, IPv4

# `trickles` with argv[2:], its peak RSS into argv[1]; numpy imported first: the decoder
# imports it on a large batch, so both runs compared hold it
DRIVER = PEAK_RSS_DRIVER.format(module="trickles_kit.cli", preload="""
try:
    import numpy  # noqa: F401
except ImportError:
    pass""")


def frames() -> list[tuple[float, bytes]]:
    """Datagrams of two reference captures (a SYN, losses, retransmissions)."""
    out = []
    for name in ("one_loss.pcap", "clean.pcap"):
        out += list(read_pcap(ROOT / "captures" / name).datagrams())
    return out


def _pcap_header(f, linktype: int, snaplen: int) -> None:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))


def _records(f, frs, eth: bool) -> None:
    for ts, d in frs:
        fr = ETH + d if eth else d
        sec = int(ts)
        f.write(struct.pack("<IIII", sec, round((ts - sec) * 1e6) % 1_000_000, len(fr), len(fr)))
        f.write(fr)


def _ng_block(f, btype: int, body: bytes) -> None:
    body += b"\0" * (-len(body) % 4)
    f.write(struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12))


def _ng_packets(f, frs) -> None:
    for ts, d in frs:
        t = round(ts * 1e6)
        fr = ETH + d
        _ng_block(f, 6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(fr), len(fr)) + fr)


def write_capture_file(path: Path, kind: str, frs: list[tuple[float, bytes]]) -> None:
    """`kind`: "small" (the frames, Ethernet), or a large sparse capture:

    * huge_record — the frames, one record of `JUNK` bytes (snapshot length 2^32-1), the frames;
    * huge_block — the same as pcapng, one Enhanced Packet block of `JUNK` bytes;
    * big_records — the frames, then 256 KiB records of zeros (the largest a reader accepts
      whole) up to `JUNK` bytes;
    * empty_records — the audit's sparse pcap: a raw-IP pcap header, the frames, then zeros (a
      hole of 64 MB: 4 million empty records);
    * many_packets — the frames 40 times (~64,000 Trickles packets: the streamed output).
    """
    with open(path, "wb") as f:
        if kind == "small":
            _pcap_header(f, LINKTYPE_EN10MB, 65535)
            _records(f, frs, True)
        elif kind == "huge_record":
            _pcap_header(f, LINKTYPE_EN10MB, 0xFFFFFFFF)
            _records(f, frs, True)
            f.write(struct.pack("<IIII", 1, 0, JUNK, JUNK))
            f.seek(JUNK, 1)
            _records(f, frs, True)
        elif kind == "huge_block":
            _ng_block(f, 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
            _ng_block(f, 1, struct.pack("<HHI", LINKTYPE_EN10MB, 0, 0))
            _ng_packets(f, frs)
            f.write(struct.pack("<IIIIIII", 6, JUNK + 32, 0, 0, 0, JUNK, JUNK))
            f.seek(JUNK, 1)
            f.write(struct.pack("<I", JUNK + 32))
            _ng_packets(f, frs)
        elif kind == "big_records":
            _pcap_header(f, LINKTYPE_EN10MB, MAX_RECORD)
            _records(f, frs, True)
            for _ in range(JUNK // MAX_RECORD):
                f.write(struct.pack("<IIII", 1, 0, MAX_RECORD, MAX_RECORD))
                f.seek(MAX_RECORD, 1)
            _records(f, frs, True)
        elif kind == "empty_records":
            _pcap_header(f, 101, 65535)
            _records(f, frs, False)
            f.truncate(f.tell() + (64 << 20))
        elif kind == "many_packets":
            _pcap_header(f, LINKTYPE_EN10MB, 65535)
            for _ in range(40):
                _records(f, frs, True)
        else:
            raise ValueError(kind)


def run_decode(tmp_path: Path, tag: str, *args: str) -> tuple[int, int, Path, str]:
    """(exit status, peak RSS in kB, stdout file, stderr) of `trickles decode ARGS`."""
    hwm = tmp_path / f"{tag}.hwm"
    out = tmp_path / f"{tag}.out"
    with open(out, "wb") as f:
        p = subprocess.run([sys.executable, "-c", DRIVER, str(hwm), "decode", *args],
                           stdout=f, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=600)
    return p.returncode, int(hwm.read_text()), out, p.stderr


def _json_rows(path: Path) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        del r["index"]  # the record number: the junk records shift it
    return rows


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory):
    """peak RSS (kB) and stdout of the same command on the small capture, once per options."""
    tmp = tmp_path_factory.mktemp("small")
    small = tmp / "small.pcap"
    write_capture_file(small, "small", frames())
    done: dict[tuple, tuple[int, Path]] = {}

    def get(*args: str) -> tuple[int, Path]:
        if args not in done:
            rc, kb, out, err = run_decode(tmp, f"small{len(done)}", str(small), *args)
            assert rc == 0, err
            done[args] = (kb, out)
        return done[args]

    return get


@pytest.mark.parametrize("kind,fmt,extra", [
    ("huge_record", "json", ()),
    ("huge_block", "json", ()),
    ("big_records", "table", ()),
    ("empty_records", "table", ()),
    ("empty_records", "table", ("--events",)),
    ("many_packets", "csv", ()),
])
def test_decode_of_a_large_capture_stays_in_bounded_memory(tmp_path: Path, baseline, kind: str,
                                                          fmt: str, extra: tuple) -> None:
    frs = frames()
    big = tmp_path / f"{kind}.pcap"
    write_capture_file(big, kind, frs)
    assert big.stat().st_size > (20 << 20 if kind == "many_packets" else 60 << 20)
    args = ("--format", fmt, *extra)
    base_kb, out0 = baseline(*args)
    rc, peak_kb, out, err = run_decode(tmp_path, kind, str(big), *args)
    assert rc == 0, err
    assert "Traceback" not in err
    grown_mib = (peak_kb - base_kb) / 1024
    print(f"{kind} {fmt} {' '.join(extra)}: file {big.stat().st_size / 2**20:.0f} MiB, "
          f"peak RSS {peak_kb / 1024:.1f} MiB, small capture {base_kb / 1024:.1f} MiB, "
          f"+{grown_mib:.1f} MiB")
    assert grown_mib <= BOUND_MIB, (kind, peak_kb, base_kb)
    # ... and nothing of the real traffic is lost around the junk
    if kind in ("huge_record", "huge_block"):
        assert _json_rows(out) == _json_rows(out0) * 2
    elif kind == "many_packets":
        assert len(out.read_text().splitlines()) - 1 == 40 * (len(out0.read_text().splitlines())
                                                              - 1)
    elif "--events" not in extra:
        text = out.read_text()
        n = sum(1 for x in text.splitlines() if not x.startswith(("--", "     #")))
        assert n == len(frs) * (2 if kind == "big_records" else 1)
        assert ("not_trickles " + str(JUNK // MAX_RECORD) in text if kind == "big_records"
                else "truncated_file 1" not in text)


def test_oversized_records_are_skipped_unread_and_counted(tmp_path: Path) -> None:
    """A record (or pcapng block) over MAX_RECORD is counted, not read; the frames around it
    decode as without it; a classic record over both limits is still a corrupt file."""
    frs = frames()[:40]
    for kind in ("huge_record", "huge_block"):
        p = tmp_path / f"{kind}.cap"
        write_capture_file(p, kind, frs)
        cap = decode_pcap(p, events=False)
        assert cap.errors["not_trickles.oversized"] == 1, cap.errors
        assert cap.n_packets == 2 * len(frs) and not cap.truncated
        r = PcapReader(p)
        assert sum(1 for _ in r) == 2 * len(frs) and r.skipped["oversized"] == 1
        assert r.frames == 2 * len(frs) + 1
    # cut inside the oversized record: the frames before it, then a truncation warning
    p = tmp_path / "cut.cap"
    write_capture_file(p, "huge_record", frs)
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(size // 2)
    with pytest.warns(UserWarning, match="needs"):
        cap = decode_pcap(p, events=False)
    assert cap.truncated and cap.n_packets == len(frs)


def test_a_pipe_is_read_in_order_in_windows(tmp_path: Path) -> None:
    """A capture that is not a regular file (a FIFO) streams too: the same rows."""
    import os
    import threading

    frs = frames()
    p = tmp_path / "small.pcap"
    write_capture_file(p, "small", frs)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(p.read_bytes())

    t = threading.Thread(target=feed)
    t.start()
    try:
        cap = decode_pcap(fifo, events=False)
    finally:
        t.join(timeout=30)
    ref = decode_pcap(p, events=False)
    assert [r.as_dict() for r in cap.packets] == [r.as_dict() for r in ref.packets]


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.stem)
def test_streamed_output_equals_the_whole_capture_path(capture: Path, capsys) -> None:
    """`trickles decode` (streamed, batch by batch) prints exactly what the decoded Capture
    prints (`write_capture` of `decode_pcap`), in every format, with and without the secret."""
    secret_file = capture.with_suffix(".secret")
    secret = bytes.fromhex(secret_file.read_text().strip())
    for with_secret in (False, True):
        cap = decode_pcap(capture, secret=secret if with_secret else None, events=False)
        for fmt in ("table", "csv", "json"):
            want = io.StringIO()
            write_capture(cap, fmt, False, want)
            args = ["decode", str(capture), "--format", fmt]
            if with_secret:
                args += ["--secret-file", str(secret_file)]
            assert cli_main(args) == 0
            got = capsys.readouterr()
            assert got.out == want.getvalue(), (capture.name, fmt, with_secret)
            assert got.err == ""


def test_crafted_headers_keep_the_readers_state_bounded(tmp_path: Path) -> None:
    """What a reader keeps per distinct input value is bounded: a pcapng with more interface
    blocks than MAX_INTERFACES is a corrupt file (one clear error); loopback frames with
    thousands of distinct address families count under one reason."""
    from trickles_kit.capture.pcapio import MAX_INTERFACES, PcapError, write_pcap

    p = tmp_path / "ifaces.pcapng"
    with open(p, "wb") as f:
        _ng_block(f, 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        for _ in range(MAX_INTERFACES + 1):
            _ng_block(f, 1, struct.pack("<HHI", LINKTYPE_EN10MB, 0, 0))
    with pytest.raises(PcapError, match="interface block"):
        decode_pcap(p, events=False)
    p = tmp_path / "families.pcap"
    write_pcap(p, [(1.0, (1000 + i).to_bytes(4, "little") + b"x" * 20) for i in range(3000)],
               linktype=0)
    r = PcapReader(p)
    assert sum(1 for _ in r) == 0 and r.skipped == {"family_other": 3000}
