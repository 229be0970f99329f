"""Where a Trickles client talks from and to: a URL's address, this host's address toward a
server, and a transport by name.

Transport plumbing, not HTTP: the fetch application (apps/fetch.py), the asyncio client
(net/aio.py) and the socket-like API (net/socketapi.py) all open their endpoints this way.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from trickles_kit.net.ip import PROTO_TRICKLES
from trickles_kit.net.raw import RawTransport
from trickles_kit.net.transport import Transport
from trickles_kit.net.udp import UdpTransport

DEFAULT_PORT = 8080


def parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, path-with-query) of an http:// or trickles:// URL."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "trickles"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} (use http:// or trickles://)")
    if not parts.hostname:
        raise ValueError(f"no host in URL {url!r}")
    host = socket.gethostbyname(parts.hostname)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return host, parts.port or DEFAULT_PORT, path


def local_address_for(server: str) -> str:
    """This host's address toward `server`; on loopback a distinct 127.x address, so a raw
    socket bound to it receives only this client's datagrams."""
    if server.startswith("127."):
        return "127.0.0.2" if server != "127.0.0.2" else "127.0.0.3"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((server, 9))
        return s.getsockname()[0]


def open_transport(kind: str, local_ip: str, ip_proto: int = PROTO_TRICKLES,
                   udp_offload: bool | None = False) -> Transport:
    """A client or server transport by name: 'udp' (no privileges) or 'raw'. `udp_offload`:
    UDP segmentation offload for runs of equal datagrams (net/gso.py); None: only while no
    capture runs on this host."""
    if kind == "udp":
        return UdpTransport(local_ip, 0, segment_offload=udp_offload)
    if kind == "raw":
        return RawTransport(local_ip, ip_proto)
    raise ValueError(f"unknown transport {kind!r} (use raw or udp)")


__all__ = ["DEFAULT_PORT", "local_address_for", "open_transport", "parse_url"]
