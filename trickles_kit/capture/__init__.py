"""Captures: read pcap/pcapng, decode Trickles segments into rows and the engine's own events,
replay them in time, and record live traffic with tcpdump.

    from trickles_kit.capture import decode_pcap
    cap = decode_pcap("captures/one_loss.pcap",
                      secret=bytes.fromhex(open("captures/one_loss.secret").read()))
    cap.packets[0], cap.events[:5], cap.errors, cap.events_df()

Modules: `pcapio` (the reader), `decode` (rows, verdicts, events — the rules are in its
docstring; the work is in `rows`, `batches`, `parse` and `events`), `replay` (paced
iteration), `live` (tcpdump); the commands `trickles decode`,
`trickles replay` and `trickles capture` are in cli/capture.py.
"""

from trickles_kit.capture.decode import Capture, PacketRow, decode_pcap, derive_events
from trickles_kit.capture.live import LiveCapture, LiveCaptureError
from trickles_kit.capture.pcapio import PcapError, Record, TruncatedCaptureWarning, read_pcap
from trickles_kit.capture.replay import replay_events, replay_packets

__all__ = [
    "Capture",
    "LiveCapture",
    "LiveCaptureError",
    "PacketRow",
    "PcapError",
    "Record",
    "TruncatedCaptureWarning",
    "decode_pcap",
    "derive_events",
    "read_pcap",
    "replay_events",
    "replay_packets",
]
