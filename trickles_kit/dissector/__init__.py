"""The Wireshark dissector for Trickles, shipped with the package (`trickles.lua`).

It dissects Trickles segments carried in IP protocol 253, in UDP (port 8080) and in real TCP
(IP protocol 6) on the service port (8080); the ports are preferences
(`trickles.service_port`, `trickles.udp_port`, `trickles.ip_proto`). Every field is named under
`trickles.` (`trickles.seq`, `trickles.cont.tcpbase`, `trickles.sack.left`, ...). It is written
for the Wireshark 4.0 Lua API (Lua 5.2) and tested with tshark 4.0.

Install it either way:

* copy it into your personal plugin folder, ``~/.local/lib/wireshark/plugins/`` (Wireshark and
  tshark load it at start-up)::

      mkdir -p ~/.local/lib/wireshark/plugins
      cp "$(python -c 'import trickles_kit.dissector as d; print(d.lua_path())')" \\
          ~/.local/lib/wireshark/plugins/

* or load it for one run: ``tshark -X lua_script:PATH -r capture.pcap`` (``wireshark -X ...``
  works too).

Wireshark ignores Lua scripts when it runs as root: open captures as an ordinary user (as root,
e.g. ``setpriv --reuid=65534 --regid=65534 --clear-groups tshark ...``, with the pcap and the
script readable by that user).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["lua_path"]


def lua_path() -> Path:
    """Path of the shipped `trickles.lua` dissector."""
    return Path(__file__).resolve().with_name("trickles.lua")
