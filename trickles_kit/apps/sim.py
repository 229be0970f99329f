"""A seeded, virtual-time network that runs one server engine and many client engines.

Links model propagation delay, a serialization rate with a drop-tail queue, random or patterned
loss, reordering and duplication. Everything draws from one `random.Random(seed)`, so a run is
reproducible bit for bit; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from trickles_kit.apps.generated import Generated, gen_request, generated_sha256
from trickles_kit.core.client import ClientConfig, ClientEngine
from trickles_kit.core.params import require_same
from trickles_kit.core.phase import Phase
from trickles_kit.core.server import Handler, ServerConfig, ServerEngine
from trickles_kit.core.transfer_report import TransferReport, goodput_bps
from trickles_kit.net.ip import PROTO_TRICKLES
from trickles_kit.net.pcap import PcapWriter


class Simulator:
    """Discrete-event loop: callbacks run in (time, insertion) order."""

    def __init__(self, seed: int = 0) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self._q: list[tuple[float, int, Callable, tuple]] = []
        self._n = 0
        self.events_run = 0

    def at(self, t: float, fn: Callable, *args) -> None:
        self._n += 1
        heapq.heappush(self._q, (t if t > self.now else self.now, self._n, fn, args))

    def run(self, until: float = float("inf"), stop: Callable[[], bool] | None = None,
            max_events: int = 50_000_000) -> None:
        q = self._q
        while q and self.events_run < max_events:
            t = q[0][0]
            if t > until:
                break
            _, _, fn, args = heapq.heappop(q)
            self.now = t
            fn(*args)
            self.events_run += 1
            if stop is not None and stop():
                break


@dataclass
class LinkConfig:
    delay: float = 0.010  # one-way propagation, seconds
    rate: float | None = 100e6  # bits/s; None = infinitely fast
    queue: int = 1000  # packets waiting for the wire before drop-tail
    loss: float = 0.0  # probability each packet is lost
    loss_pattern: Iterable[int] | Callable[[int], bool] | None = None  # indices (0-based) lost
    reorder: float = 0.0  # probability a packet is held back by `reorder_delay`
    reorder_delay: float = 0.004
    duplicate: float = 0.0  # probability a packet is delivered twice

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
        if self.delay < 0 or (self.rate is not None and self.rate <= 0) or self.queue < 1:
            raise ValueError("delay must be >= 0, rate > 0 and queue >= 1")


@dataclass
class LinkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    queue_drops: int = 0
    duplicated: int = 0
    reordered: int = 0
    bytes: int = 0


class Link:
    """One direction of a path. `deliver(data, dest)` runs at the arrival time."""

    def __init__(self, sim: Simulator, cfg: LinkConfig, deliver: Callable[[bytes, object], None]):
        self.sim = sim
        self.cfg = cfg
        self.deliver = deliver
        self.stats = LinkStats()
        self._busy_until = 0.0
        self._departures: deque[float] = deque()
        pat = cfg.loss_pattern
        self._pattern: Callable[[int], bool] | None
        if pat is None or callable(pat):
            self._pattern = pat  # type: ignore[assignment]
        elif isinstance(pat, range):
            self._pattern = pat.__contains__  # O(1), however long the range
        else:
            lost = frozenset(pat)
            self._pattern = lost.__contains__

    def _draws(self, data: bytes) -> Callable[[bytes], float]:
        """Uniform draws for this packet's fates (tag b"L" loss, b"R" reorder, b"D" duplicate).

        The default takes them from the simulator's seeded generator; a subclass may derive
        them from the packet itself (testing.liars.KeyedLossLink) so that two runs that send
        different packets still meet the same losses for the same ones.
        """
        rng = self.sim.rng
        return lambda _tag: rng.random()

    def send(self, data: bytes, dest: object) -> None:
        sim, cfg, st = self.sim, self.cfg, self.stats
        idx = st.sent
        st.sent += 1
        draw = self._draws(data)
        if (self._pattern is not None and self._pattern(idx)) or (
            cfg.loss and draw(b"L") < cfg.loss
        ):
            st.lost += 1
            return
        now = sim.now
        if cfg.rate is not None:
            deps = self._departures
            while deps and deps[0] <= now:
                deps.popleft()
            if len(deps) >= cfg.queue:
                st.queue_drops += 1
                return
            start = self._busy_until if self._busy_until > now else now
            depart = start + len(data) * 8 / cfg.rate
            self._busy_until = depart
            deps.append(depart)
        else:
            depart = now
        arrive = depart + cfg.delay
        if cfg.reorder and draw(b"R") < cfg.reorder:
            st.reordered += 1
            arrive += cfg.reorder_delay
        st.bytes += len(data)
        sim.at(arrive, self._arrive, data, dest)
        if cfg.duplicate and draw(b"D") < cfg.duplicate:
            st.duplicated += 1
            sim.at(arrive + 0.0001, self._arrive, data, dest)

    def _arrive(self, data: bytes, dest: object) -> None:
        self.stats.delivered += 1
        self.deliver(data, dest)


class _ClientSlot:
    __slots__ = ("engine", "timer_at", "hasher", "received", "done_at", "start")

    def __init__(self, engine: ClientEngine, start: float) -> None:
        self.engine = engine
        self.timer_at: float | None = None
        self.hasher = hashlib.sha256()
        self.received = 0
        self.done_at: float | None = None
        self.start = start


class SimNetwork:
    """A server and its clients joined by a shared uplink and a shared downlink."""

    SERVER_IP = socket.inet_aton("10.0.0.1")
    SERVER_PORT = 80

    def __init__(self, sim: Simulator, server: ServerEngine, down: LinkConfig | None = None,
                 up: LinkConfig | None = None, pcap: PcapWriter | None = None) -> None:
        self.sim = sim
        self.pcap = pcap  # the server endpoint's view: requests as they arrive, answers as sent
        self.server = server
        self.down = Link(sim, down or LinkConfig(), self._to_client)
        self.up = Link(sim, up or LinkConfig(), self._to_server)
        self.clients: dict[tuple[bytes, int], _ClientSlot] = {}
        self.keep_data = False
        self.data: dict[tuple[bytes, int], bytearray] = {}
        # drops requests as they reach the server, like a LossyTransport on the wire
        # (faults.DropPattern: the same request indices in every run)
        self.server_drop: Callable[[bytes, bytes], bool] | None = None
        self.server_dropped = 0

    # --------------------------------------------------------------- clients
    def add_client(self, engine: ClientEngine, request: bytes, start: float = 0.0) -> None:
        key = (engine.local_ip, engine.local_port)
        if key in self.clients:
            raise ValueError(f"client {key} already added")
        server_cfg = getattr(self.server, "cfg", None)  # labs' replicas have none of their own
        if server_cfg is not None:
            require_same(server_cfg, engine.cfg)
        self.clients[key] = _ClientSlot(engine, start)
        if self.keep_data:
            self.data[key] = bytearray()
        self.sim.at(start, self._connect, key, request)

    def _connect(self, key: tuple[bytes, int], request: bytes) -> None:
        slot = self.clients[key]
        slot.engine.connect(self.sim.now, request)
        self._service(slot, key)

    def _service(self, slot: _ClientSlot, key: tuple[bytes, int]) -> None:
        eng = slot.engine
        for seg in eng.datagrams_to_send():
            self.up.send(seg, key)
        chunk = eng.read()
        if chunk:
            slot.hasher.update(chunk)
            slot.received += len(chunk)
            if self.keep_data:
                self.data[key] += chunk
        if slot.done_at is None and eng.done:
            slot.done_at = self.sim.now
        t = eng.get_timer()
        if t is not None and (slot.timer_at is None or t < slot.timer_at):
            slot.timer_at = t
            self.sim.at(t, self._timer, key)

    def _timer(self, key: tuple[bytes, int]) -> None:
        slot = self.clients[key]
        slot.timer_at = None
        eng = slot.engine
        t = eng.get_timer()
        if t is not None and t <= self.sim.now:
            eng.handle_timer(self.sim.now)
        self._service(slot, key)

    # --------------------------------------------------------------- delivery
    def _to_server(self, data: bytes, key: object) -> None:
        cip = key[0]  # type: ignore[index]
        if self.server_drop is not None and self.server_drop(data, cip):
            self.server_dropped += 1
            return
        pcap = self.pcap
        now = self.sim.now
        if pcap is not None:
            pcap.log(now, cip, self.SERVER_IP, data, PROTO_TRICKLES)
        for seg in self.server.receive(data, cip, now):
            if pcap is not None:
                pcap.log(now, self.SERVER_IP, cip, seg, PROTO_TRICKLES)
            self.down.send(seg, key)

    def _to_client(self, data: bytes, key: object) -> None:
        slot = self.clients.get(key)  # type: ignore[arg-type]
        if slot is None:
            return
        slot.engine.receive(data, self.sim.now)
        self._service(slot, key)  # type: ignore[arg-type]

    def all_finished(self) -> bool:
        return all(s.engine.done or s.engine.phase in (Phase.FAILED, Phase.CLOSED)
                   for s in self.clients.values())


def sim_echo_key(isn: int) -> bytes:
    """A simulated client's echo-token key, derived from its (seeded) ISN: simulations stay
    reproducible. Real clients draw theirs from os.urandom (ClientEngine's default)."""
    return hashlib.blake2b(isn.to_bytes(4, "big"), person=b"trickles-simecho",
                           digest_size=16).digest()


def client_address(i: int) -> tuple[bytes, int]:
    """Distinct simulated client endpoints: 10.1.x.y (y in 2..251), port 40000 + i % 20000."""
    return socket.inet_aton(f"10.1.{(i // 250) & 255}.{i % 250 + 2}"), 40000 + (i % 20000)


def sim_server(seed: int, handler: Handler, config: ServerConfig | None = None,
               on_event: Callable | None = None, secret: bytes | None = None) -> ServerEngine:
    """A server engine at the simulated service address; its master secret derived from `seed`
    unless given, so a run is reproducible. A handler that seals state (one with `attach`, as
    `Generated` and the web server) is attached to the engine's keys."""
    if secret is None:
        secret = random.Random(seed ^ 0x5EC12E7).randbytes(32)
    server = ServerEngine(secret, handler, SimNetwork.SERVER_IP, SimNetwork.SERVER_PORT, config,
                          on_event)
    attach = getattr(handler, "attach", None)
    if callable(attach):
        attach(server)
    return server


@dataclass
class SimWorld:
    """What every simulated run is made of: a seeded simulator, the network joining the
    server to one client, and that client. Built by `build_world`; run with `run`."""

    sim: Simulator
    net: SimNetwork
    server: ServerEngine  # (or anything with ServerEngine.receive: labs' replicas)
    client: ClientEngine
    address: tuple[bytes, int]  # the client's

    @property
    def slot(self) -> _ClientSlot:
        """The client's bookkeeping in the network: bytes read, their hash, when it was done."""
        return self.net.clients[self.address]

    def run(self, time_limit: float) -> float:
        """Run until the client finished or `time_limit` virtual seconds; the wall-clock
        seconds it took."""
        t0 = time.perf_counter()
        self.sim.run(until=time_limit, stop=self.net.all_finished)
        return time.perf_counter() - t0

    def seconds(self) -> float:
        """Virtual seconds to the client's completion (or to now, if it did not complete)."""
        done = self.slot.done_at
        return done if done is not None else self.sim.now


def build_world(seed: int, server: ServerEngine, request: bytes, *, loss: float = 0.0,
                down: LinkConfig | None = None, up: LinkConfig | None = None,
                client_config: ClientConfig | None = None, on_event: Callable | None = None,
                pcap: PcapWriter | None = None, keep_data: bool = False,
                isn: int | None = None, engine_cls: type[ClientEngine] = ClientEngine,
                **engine_kwargs) -> SimWorld:
    """The one way a simulated world is put together: `Simulator(seed)`, a `SimNetwork` to
    `server` (`loss` both ways unless link configs are given), and one `engine_cls` client at
    `client_address(0)` asking for `request`. Its ISN is the simulator's first draw unless
    given, its echo key derived from the ISN: a run is reproducible bit for bit.
    `keep_data` keeps the bytes the client reads (`net.data`), not only their hash."""
    sim = Simulator(seed)
    net = SimNetwork(sim, server, down or LinkConfig(loss=loss), up or LinkConfig(loss=loss),
                     pcap)
    net.keep_data = keep_data
    ip, port = client_address(0)
    if isn is None:
        isn = sim.rng.getrandbits(32)
    client = engine_cls(ip, port, SimNetwork.SERVER_IP, SimNetwork.SERVER_PORT, client_config,
                        isn=isn, on_event=on_event, echo_key=sim_echo_key(isn), **engine_kwargs)
    net.add_client(client, request)
    return SimWorld(sim, net, server, client, (ip, port))


TransferResult = TransferReport  # the older name of what simulate_transfer returns


def simulate_transfer(
    size: int,
    loss: float = 0.0,
    seed: int = 1,
    *,
    down: LinkConfig | None = None,
    up: LinkConfig | None = None,
    server_config: ServerConfig | None = None,
    client_config: ClientConfig | None = None,
    handler: Handler | None = None,
    request: bytes | None = None,
    expected_sha256: str | None = None,
    on_event=None,
    time_limit: float = 3600.0,
    secret: bytes | None = None,
    pcap: str | None = None,
    server_drop: Callable[[bytes, bytes], bool] | None = None,
) -> TransferReport:
    """Fetch `size` generated bytes through the simulator and report what happened.

    `loss` applies to both directions unless explicit link configs are given. `server_drop`
    (segment, client IP) -> bool drops requests on arrival at the server, as `trickles serve
    --drop-at` does on a real wire (e.g. `net.faults.DropPattern`).
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    if handler is None:
        handler = Generated()
        request = gen_request(size, seed)
        expected_sha256 = generated_sha256(size, seed)
    elif request is None or expected_sha256 is None:
        raise ValueError("a custom handler needs `request` and `expected_sha256`")
    server = sim_server(seed, handler, server_config, on_event, secret)
    pw = PcapWriter(pcap) if pcap else None
    world = build_world(seed, server, request, loss=loss, down=down, up=up,
                        client_config=client_config, on_event=on_event, pcap=pw)
    world.net.server_drop = server_drop
    try:
        wall = world.run(time_limit)
    finally:
        if pw is not None:
            pw.close()
    slot, client, net = world.slot, world.client, world.net
    got = slot.hasher.hexdigest()
    secs = world.seconds()
    return TransferReport.from_client(
        client, ok=client.done and got == expected_sha256 and slot.received == size,
        bytes=slot.received, sha256_received=got, seconds=round(secs, 6),
        goodput_bps=goodput_bps(slot.received, secs), sha256_sent=expected_sha256,
        server=dict(server.counters),
        links={"down": vars(net.down.stats), "up": vars(net.up.stats),
               **({"server_dropped": net.server_dropped} if server_drop is not None else {})},
        wall_seconds=round(wall, 4), sim_events=world.sim.events_run)
