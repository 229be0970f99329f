"""Running one client (honest or a liar) against the real ServerEngine over the simulated path.

`run_client` builds exactly what `simulate_transfer` builds, with any engine class as the client
(and optional link and server hooks). `keyed_links` makes both directions `KeyedLossLink`s, whose
losses are a keyed hash of each packet's bytes, so an honest client and a liar can be compared
on the *same* losses (the shared RNG of the plain links would hand a liar that sends one extra
segment a different loss pattern from then on).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from trickles_kit.apps.generated import Generated, gen_request, generated_bytes
from trickles_kit.apps.sim import (
    Link,
    LinkConfig,
    SimNetwork,
    Simulator,
    build_world,
    sim_server,
)
from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.events import EventSink
from trickles_kit.core.server import ServerConfig, ServerEngine
from trickles_kit.wire.continuation import MINIMAL
from trickles_kit.wire.messages import REQ_SYN

_U32 = 0xFFFFFFFF


def _fate_bytes(data: bytes, down: bool) -> bytes:
    """What decides a packet's fate: the segment without the TCP request counter, checksum and
    user continuation (the Generated handler seals it with a random AES-GCM nonce, so its
    bytes differ from run to run)."""
    p = data[28:]
    try:
        if down:  # nonce u32, siblings, position, ucont_len u16, continuation, ucont, chunks
            ulen = int.from_bytes(p[6:8], "big")
            end = 8 + (18 if p[8] == MINIMAL else 75)
            return data[4:12] + p[:end] + p[end + ulen:]
        off = 1 if p[0] == REQ_SYN else 76  # type, continuation, SACKs, ucont_len, ucont, ...
        off += 1 + 12 * p[off]
        ulen = int.from_bytes(p[off : off + 2], "big")
        return p[: off + 2] + p[off + 2 + ulen :]
    except IndexError:
        return p


class KeyedLossLink(Link):
    """A `Link` whose loss, reordering and duplication are decided by a keyed hash of the packet
    (`_fate_bytes`, and how many times those bytes were sent before) instead of the simulator's
    shared RNG.

    Two runs that put the same packets on the wire see the same fate for them, whatever else
    either run sends: an honest client and a liar are compared on the *same* losses up to the
    point where their traffic really differs. Exact copies of a packet are decided
    independently (the occurrence count is in the key). The request counter in the TCP header
    is not in the key (a liar's extra segments shift it).
    """

    def __init__(self, sim: Simulator, cfg: LinkConfig, deliver, key: bytes,
                 down: bool) -> None:
        super().__init__(sim, cfg, deliver)
        self.key = key
        self.down = down
        self._seen: dict[bytes, int] = {}

    def _draw(self, tag: bytes, digest: bytes) -> float:
        h = hashlib.blake2b(tag + digest, key=self.key, digest_size=8).digest()
        return int.from_bytes(h, "big") / 2.0**64

    def _draws(self, data: bytes) -> Callable[[bytes], float]:
        body = hashlib.blake2b(_fate_bytes(data, self.down), digest_size=16).digest()
        n = self._seen.get(body, 0)
        self._seen[body] = n + 1
        digest = body + n.to_bytes(4, "big")
        return lambda tag: self._draw(tag, digest)


def keyed_links(down: LinkConfig, up: LinkConfig, seed: int) -> Callable[[SimNetwork], None]:
    """A `link_factory` for `run_client`: both directions become `KeyedLossLink`s."""

    def factory(net: SimNetwork) -> None:
        key = hashlib.blake2b(seed.to_bytes(8, "big"), digest_size=32).digest()
        net.down = KeyedLossLink(net.sim, down, net._to_client, key + b"down", True)
        net.up = KeyedLossLink(net.sim, up, net._to_server, key + b"up", False)

    return factory


# ============================================================================ running one
@dataclass
class ClientRun:
    """What one client (honest or not) got from the real server over the simulated path."""

    name: str
    ok: bool  # every byte, in order, byte-exact
    exact_prefix: bool  # whatever was delivered matches the generated stream
    size: int
    bytes: int
    seconds: float  # virtual: time to completion, or until the run stopped
    goodput_bps: float
    phase: str
    server: dict = field(default_factory=dict)
    client: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)
    key_epoch: int = 0  # the server's key epoch when the run stopped
    wall_seconds: float = 0.0

    def drops(self, *reasons: str) -> int:
        return sum(self.server.get("drop." + r, 0) for r in reasons)


def run_client(
    engine_cls: type[ClientEngine] = ClientEngine,
    size: int = 300_000,
    seed: int = 1,
    *,
    loss: float = 0.0,
    down: LinkConfig | None = None,
    up: LinkConfig | None = None,
    link_factory: Callable[[SimNetwork], None] | None = None,
    server_config: ServerConfig | None = None,
    server_hook: Callable[[ServerEngine], None] | None = None,
    client_config: ClientConfig | None = None,
    time_limit: float = 120.0,
    on_event: EventSink | None = None,
    name: str | None = None,
    drain: float = 0.0,
    **engine_kwargs,
) -> ClientRun:
    """Fetch `size` generated bytes with an `engine_cls` client, built as `simulate_transfer`
    builds its ClientEngine (same seed, same secret, same address, same draws from the RNG).

    `link_factory(net)` may replace `net.down` / `net.up` before the client starts;
    `server_hook(server)` sees the server engine before the first packet. `drain` runs the
    network that much longer after the client finished, so segments still in flight arrive
    (the server counts what it makes of them); goodput is measured at completion either way.
    """
    server = sim_server(seed, Generated(), server_config, on_event)
    if server_hook is not None:
        server_hook(server)
    world = build_world(seed, server, gen_request(size, seed), loss=loss, down=down, up=up,
                        client_config=client_config, on_event=on_event, keep_data=True,
                        engine_cls=engine_cls, **engine_kwargs)
    if link_factory is not None:  # Links draw nothing when made: the client's ISN is unchanged
        link_factory(world.net)
    sim, net, client = world.sim, world.net, world.client
    t0 = time.perf_counter()
    world.run(time_limit)
    stopped = sim.now
    if drain > 0:
        sim.run(until=min(sim.now + drain, time_limit))
    wall = time.perf_counter() - t0
    slot = world.slot
    data = bytes(net.data[world.address])
    exact = hashlib.sha256(data).digest() == hashlib.sha256(
        generated_bytes(seed, 0, len(data))).digest()
    secs = slot.done_at if slot.done_at is not None else min(stopped, time_limit)
    return ClientRun(
        name=name or engine_cls.__name__,
        ok=client.done and exact and len(data) == size,
        exact_prefix=exact,
        size=size,
        bytes=len(data),
        seconds=round(secs, 6),
        goodput_bps=round(len(data) * 8 / secs, 1) if secs > 0 else 0.0,
        phase=client.phase,
        server=dict(server.counters),
        client=dict(client.counters),
        links={"down": vars(net.down.stats), "up": vars(net.up.stats)},
        key_epoch=server.keys.current(sim.now),
        wall_seconds=round(wall, 4),
    )


