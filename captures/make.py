"""Regenerate the reference captures: `python captures/make.py [NAME ...]` (no NAME: all).

Every capture is deterministic (the seeded simulator or a scripted scenario, both on a virtual
clock) and is the server endpoint's view, linktype RAW, IP protocol 253. Each comes with its
master secret (`NAME.secret`, hex) so MAC and nonce verdicts can be checked. `index.json` says
what each shows and which events it must decode to; `tests/capture/test_captures.py` holds it
to that.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from trickles_kit.apps.sim import LinkConfig, simulate_transfer  # noqa: E402
from trickles_kit.core.server import ServerConfig  # noqa: E402
from trickles_kit.net.pcap import PcapWriter  # noqa: E402
from trickles_kit.testing import scenario  # noqa: E402

FAST = {"rate": None}


def _sim(name: str, size: int, seed: int, **kw) -> None:
    r = simulate_transfer(size, seed=seed, pcap=str(HERE / f"{name}.pcap"), **kw)
    if not r.ok:
        raise SystemExit(f"{name}: the transfer failed: {r.summary()}")
    secret = random.Random(seed ^ 0x5EC12E7).randbytes(32)  # simulate_transfer's default
    (HERE / f"{name}.secret").write_text(secret.hex() + "\n")


def _scenario(name: str, script: str) -> None:
    path = Path(scenario.__file__).resolve().parent.parent / "scenarios" / script
    pw = PcapWriter(str(HERE / f"{name}.pcap"))
    try:
        result = scenario.run_scenario(path.read_text(), script, pcap=pw)
    finally:
        pw.close()
    if not result.passed:
        raise SystemExit(f"{name}: scenario {script} failed:\n{result.report()}")
    (HERE / f"{name}.secret").write_text(scenario.SECRET.hex() + "\n")


CAPTURES = {
    "clean": lambda: _sim("clean", 200_000, 1, down=LinkConfig(**FAST), up=LinkConfig(**FAST)),
    "slowstart_ca": lambda: _sim(
        "slowstart_ca", 400_000, 2, down=LinkConfig(**FAST), up=LinkConfig(**FAST),
        server_config=ServerConfig(initial_ssthresh=8)),
    "one_loss": lambda: _sim("one_loss", 300_000, 3, down=LinkConfig(loss_pattern=[40], **FAST),
                             up=LinkConfig(**FAST)),
    "burst_timeout": lambda: _sim("burst_timeout", 200_000, 4,
                                  down=LinkConfig(loss_pattern=range(30, 80), **FAST),
                                  up=LinkConfig(**FAST)),
    "tamper": lambda: _scenario("tamper", "tamper.txt"),
    "replay": lambda: _scenario("replay", "replay.txt"),
    "hide_loss": lambda: _scenario("hide_loss", "hide_loss.txt"),
}


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in CAPTURES]
    if unknown:
        print(f"unknown capture(s): {', '.join(unknown)}; known: {', '.join(CAPTURES)}",
              file=sys.stderr)
        return 2
    for name in names or list(CAPTURES):
        CAPTURES[name]()
        size = (HERE / f"{name}.pcap").stat().st_size
        print(f"{name}.pcap  {size:,} bytes")
    index = json.loads((HERE / "index.json").read_text())
    missing = [n for n in CAPTURES if n not in index]
    if missing:
        print(f"warning: index.json has no entry for {missing}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
