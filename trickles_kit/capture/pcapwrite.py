"""Writing classic pcap and pcapng files: for tests and tools that need a capture of given
frames (the endpoints log their own traffic with `net.pcap.PcapWriter`)."""

from __future__ import annotations

import struct
from pathlib import Path

from trickles_kit.capture.pcapformat import (
    LINKTYPE_RAW,
    MAGIC_NS,
    MAGIC_US,
    PCAPNG_BOM,
    PCAPNG_EPB,
    PCAPNG_IDB,
    PCAPNG_SHB,
    PCAPNG_SPB,
)


def write_pcap(path: str | Path, frames: list[tuple[float, bytes]], linktype: int = LINKTYPE_RAW,
               byteorder: str = "<", nanos: bool = False, snaplen: int = 65535) -> None:
    """Write a classic pcap of `frames` (ts, link-layer frame): for tests and tools."""
    magic = MAGIC_NS if nanos else MAGIC_US
    scale = 1_000_000_000 if nanos else 1_000_000
    with open(path, "wb") as f:
        f.write(struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
        for ts, frame in frames:
            sec = int(ts)
            frac = int(round((ts - sec) * scale))
            if frac >= scale:
                sec, frac = sec + 1, frac - scale
            f.write(struct.pack(byteorder + "IIII", sec, frac, len(frame), len(frame)))
            f.write(frame)


def write_pcapng(path: str | Path, frames: list[tuple[float, bytes]],
                 linktype: int = LINKTYPE_RAW, byteorder: str = "<", tsresol: int = 6,
                 simple: bool = False, extra_blocks: bool = True) -> None:
    """Write a pcapng (SHB, IDB, EPB or SPB per frame, plus an unknown block to be skipped)."""
    e = byteorder

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)

    out = [block(PCAPNG_SHB, struct.pack(e + "IHHq", PCAPNG_BOM, 1, 0, -1))]
    opts = b""
    if tsresol != 6:
        opts = struct.pack(e + "HH", 9, 1) + bytes((tsresol,)) + b"\0\0\0"
        opts += struct.pack(e + "HH", 0, 0)
    out.append(block(PCAPNG_IDB, struct.pack(e + "HHI", linktype, 0, 0) + opts))
    if extra_blocks:  # a Name Resolution block and a custom block: readers must skip them
        out.append(block(4, struct.pack(e + "HH", 0, 0)))
        out.append(block(0x00000BAD, struct.pack(e + "I", 32473) + b"custom"))
    units = 10 ** tsresol
    for ts, frame in frames:
        if simple:
            out.append(block(PCAPNG_SPB, struct.pack(e + "I", len(frame)) + frame))
        else:
            t = int(round(ts * units))
            out.append(block(PCAPNG_EPB, struct.pack(e + "IIIII", 0, t >> 32, t & 0xFFFFFFFF,
                                                     len(frame), len(frame)) + frame))
    Path(path).write_bytes(b"".join(out))
