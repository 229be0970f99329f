"""What pcap and pcapng files hold: magic numbers, block and link types, size limits, the
reader's errors, and `strip_link`, which takes the IPv4 datagram out of a link-layer frame.

Shared by the reader (`pcapio`), its file window (`pcapwindow`), the pcapng block parser
(`pcapng`) and the writers (`pcapwrite`).
"""

from __future__ import annotations

LINKTYPE_NULL = 0
LINKTYPE_EN10MB = 1
LINKTYPE_RAW_BSD12 = 12
LINKTYPE_RAW_BSD14 = 14
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276

SUPPORTED_LINKTYPES = {
    LINKTYPE_NULL: "NULL",
    LINKTYPE_EN10MB: "EN10MB",
    LINKTYPE_RAW_BSD12: "RAW",
    LINKTYPE_RAW_BSD14: "RAW",
    LINKTYPE_RAW: "RAW",
    LINKTYPE_LOOP: "LOOP",
    LINKTYPE_LINUX_SLL: "LINUX_SLL",
    LINKTYPE_IPV4: "IPV4",
    LINKTYPE_LINUX_SLL2: "LINUX_SLL2",
}
RAW_LINKTYPES = frozenset((LINKTYPE_RAW, LINKTYPE_RAW_BSD12, LINKTYPE_RAW_BSD14,
                           LINKTYPE_IPV4))

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
PCAPNG_IDB, PCAPNG_PB, PCAPNG_SPB, PCAPNG_EPB = 1, 2, 3, 6

MAX_RECORD = 0x40000  # 256 KiB: larger than any real snapshot length (tcpdump -s 0 = 262144)
MAX_BLOCK = MAX_RECORD + 4096  # a pcapng block: such a frame, its headers and options
WINDOW = 1 << 21  # bytes read at a time (2 MiB): with a record, all the reader holds
BATCH = 1 << 13  # records per batch of a walk
MAX_INTERFACES = 1 << 16  # interfaces a pcapng section may describe (kept in memory)

_ETHERTYPES = {0x0806: "arp", 0x86DD: "ipv6", 0x8035: "rarp", 0x88CC: "lldp", 0x8847: "mpls"}
_VLAN = (0x8100, 0x88A8, 0x9100)


class PcapError(ValueError):
    """The file is not a readable capture (or is corrupt); the message says why and where."""


class TruncatedCaptureWarning(UserWarning):
    """The capture's last record is incomplete; the complete records before it were read."""


def _skip_reason_ethertype(et: int) -> str:
    if et < 0x0600:
        return "llc"
    return _ETHERTYPES.get(et, f"ethertype_0x{et:04x}")


def strip_link(linktype: int, frame: bytes) -> tuple[bytes | None, str]:
    """The IPv4 datagram inside `frame`, or (None, reason) when the frame carries something else."""
    if linktype in RAW_LINKTYPES:
        if frame and frame[0] >> 4 == 4:
            return frame, ""
        return None, "ipv6" if frame and frame[0] >> 4 == 6 else "not_ip"
    if linktype == LINKTYPE_EN10MB:
        if len(frame) < 14:
            return None, "short_frame"
        off = 12
        et = (frame[12] << 8) | frame[13]
        while et in _VLAN and off + 6 <= len(frame):
            off += 4
            et = (frame[off] << 8) | frame[off + 1]
        if et != 0x0800:
            return None, _skip_reason_ethertype(et)
        return frame[off + 2 :], ""
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None, "short_frame"
        et = (frame[14] << 8) | frame[15]
        return (frame[16:], "") if et == 0x0800 else (None, _skip_reason_ethertype(et))
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return None, "short_frame"
        et = (frame[0] << 8) | frame[1]
        return (frame[20:], "") if et == 0x0800 else (None, _skip_reason_ethertype(et))
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(frame) < 4:
            return None, "short_frame"
        if linktype == LINKTYPE_LOOP:
            fam = int.from_bytes(frame[:4], "big")
        else:  # host byte order of the machine that captured: accept both
            fam = int.from_bytes(frame[:4], "little")
            if fam > 0xFFFF:
                fam = int.from_bytes(frame[:4], "big")
        if fam == 2:
            return frame[4:], ""
        return None, ("ipv6" if fam in (10, 24, 28, 30) else f"family_{fam}" if fam < 256
                      else "family_other")  # (a bounded set of reasons whatever the input)
    return None, f"linktype_{linktype}"
