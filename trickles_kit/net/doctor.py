"""What this machine and this process can do, and how to get what is missing.

The core (the simulator, `serve`/`fetch` over UDP) needs only Python and `cryptography`; raw
sockets, namespaces, qdiscs, firewalls, capture tools and the lab packages are optional extras.
The exit code is 0 when the core works with at least one transport (raw or UDP).
Only the standard library is imported here; the command is `trickles doctor` (cli/doctor.py).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import socket
import sys
from dataclasses import asdict, dataclass

from trickles_kit import native
from trickles_kit.net import gso
from trickles_kit.net import privileges as priv

SYSDEPS = "make sysdeps (as root; runs scripts/install-system-deps.sh)"
LAB_PACKAGES = ("jupyterlab", "ipywidgets", "plotly", "anywidget", "scapy", "pandas")
CORE_PACKAGES = ("cryptography",)
# Parquet output (`trickles decode --format parquet`, capture.parquet) and reading it with SQL
PARQUET_PACKAGES = ("pyarrow", "duckdb")

# tool -> (Debian package, what the toolkit uses it for, installed by `make sysdeps`?)
TOOLS: dict[str, tuple[str, str, bool]] = {
    "tcpdump": ("tcpdump", "packet captures", True),
    "tshark": ("tshark", "dissecting captures", True),
    "curl": ("curl", "HTTP comparisons with Linux TCP", True),
    "setpriv": ("util-linux", "running tshark with Lua unprivileged", True),
    "chromium": ("chromium", "browser checks of the lab", False),
}


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not applicable / cannot tell
    detail: str
    hint: str = ""  # how to get it, when it is missing
    group: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _privileges() -> Check:
    root, cap = priv.is_root(), priv.has_cap_net_raw()
    who = f"uid {os.geteuid()}" + (" (root)" if root else "")
    detail = f"{who}; CAP_NET_RAW {'effective' if cap else 'not effective'}"
    return Check("root / CAP_NET_RAW", cap, detail, "" if cap else priv.raw_hint(), "privileges")


def _raw(proto: int, note: str) -> Check:
    ok, err = priv.can_open_raw_socket(proto)
    return Check(f"raw socket, IP protocol {proto}", ok, note if ok else err,
                 "" if ok else priv.raw_hint(), "transports")


def _udp() -> Check:
    ok, err = priv.can_open_udp_socket()
    return Check("UDP socket on 127.0.0.1", ok, "no privileges needed" if ok else err,
                 "" if ok else "check the loopback interface (ip link set lo up)", "transports")


def _udp_offload() -> Check:
    """UDP segmentation offload and GRO (net/gso.py): whether this kernel takes the options."""
    missing = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name, opt, value in (("UDP_SEGMENT", gso.UDP_SEGMENT, 1400),
                                 ("UDP_GRO", gso.UDP_GRO, 1)):
            try:
                s.setsockopt(gso.SOL_UDP, opt, value)
            except OSError:
                missing.append(name)
    if missing:
        return Check("UDP offload", None, f"this kernel refuses {', '.join(missing)}",
                     "optional: UDP works without it, with more CPU per packet", "transports")
    return Check("UDP offload", True, "segmentation and GRO: serve/fetch use them while no "
                 "capture runs on this host (--udp-offload auto|on|off; GRO needs the "
                 "compiled build)", "", "transports")


def _netns() -> Check:
    ok, detail = priv.can_create_netns()
    hint = "" if ok else ("needs root (CAP_SYS_ADMIN), a kernel with CONFIG_NET_NS and unshare "
                          "from util-linux; the lab's topologies need it, loopback runs do not")
    return Check("network namespaces", ok, detail, hint, "network")


def _qdisc(name: str) -> Check:
    ok, detail = priv.qdisc_probe(name)
    if not priv.which("tc"):
        ok, detail = False, f"tc not found (kernel: {detail})"
        hint = f"install iproute2: {SYSDEPS}"
    elif name == "netem":
        hint = "not needed: delay will use the user-space delay stage"
    else:
        hint = f"needs CONFIG_NET_SCH_{name.upper()} in the kernel (rate shaping on links)"
    return Check(f"tc qdisc {name}", ok, detail, "" if ok else hint, "network")


def _firewall(tool: str, package: str) -> Check:
    ok, detail = priv.firewall_probe(tool)
    hint = "" if ok else f"{SYSDEPS}, or: apt-get install -y {package}"
    return Check(tool, ok, detail, hint, "network")


def _tool(tool: str) -> Check:
    package, use, in_sysdeps = TOOLS[tool]
    path = priv.which(tool)
    how = f"{SYSDEPS}, or: apt-get install -y {package}" if in_sysdeps else \
        f"apt-get install -y {package}"
    return Check(tool, path is not None, f"{path} ({use})" if path else f"not found ({use})",
                 "" if path else how, "tools")


def _package(name: str, core: bool, extra: str = "lab") -> Check:
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    detail = "not importable"
    if found:
        try:
            detail = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            detail = "importable"
    detail += f" ({sys.executable})"
    if core:
        hint = "make venv (or: pip install -e .)"
    else:
        hint = f"make lab-venv (or: pip install -e '.[{extra}]')"
    if extra == "parquet" and not found:
        hint += ("; without it `trickles decode --format parquet` cannot write Parquet "
                 "(the pandas tables work)" if name == "pyarrow" else
                 "; it reads the Parquet output with SQL (docs/analysis.md)")
    group = "python (core)" if core else f"python ({extra})"
    return Check(f"python: {name}", found, detail, "" if found else hint, group)


def _build() -> Check:
    """Which build this process runs: pure Python, or the compiled helpers (and which modules
    mypyc compiled). Either is complete; the compiled one is faster per packet."""
    line = native.build()
    if native.speedups is None and not native.PURE:
        hint = ("optional: a C compiler and Python's headers (apt-get install -y gcc "
                "python3-dev), then: make native")
    else:
        hint = ""
    return Check("build", True, line, hint, "python (core)")


def run_doctor() -> list[Check]:
    """Every check, in display order. Side-effect free (see trickles_kit.net.privileges)."""
    checks = [
        _privileges(),
        _raw(253, "kernel TCP never sees these segments: no RSTs"),
        _raw(6, "real TCP segments; the kernel RSTs ports it does not know"),
        _udp(),
        _udp_offload(),
        _netns(),
        *(_qdisc(q) for q in ("tbf", "htb", "netem")),
        _firewall("iptables", "iptables"),
        _firewall("nft", "nftables"),
        *(_tool(t) for t in TOOLS),
        _build(),
        *(_package(p, True) for p in CORE_PACKAGES),
        *(_package(p, False) for p in LAB_PACKAGES),
        *(_package(p, False, "parquet") for p in PARQUET_PACKAGES),
    ]
    return checks


def core_ready(checks: list[Check]) -> tuple[bool, list[str]]:
    """(core usable?, usable transports): core packages present and raw (253) or UDP works."""
    by_name = {c.name: c for c in checks}
    transports = [t for t, n in (("raw", "raw socket, IP protocol 253"),
                                 ("udp", "UDP socket on 127.0.0.1")) if by_name[n].ok]
    packages = all(by_name[f"python: {p}"].ok for p in CORE_PACKAGES)
    return packages and bool(transports), transports


def summary(checks: list[Check]) -> str:
    ready, transports = core_ready(checks)
    n_ok = sum(c.ok is True for c in checks)
    n_missing = sum(c.ok is False for c in checks)
    n_na = sum(c.ok is None for c in checks)
    counts = f"{n_ok} ok, {n_missing} missing, {n_na} unknown"
    if ready:
        return f"core ready (transports: {', '.join(transports)}); {counts}"
    why = "no usable transport" if not transports else "core Python packages missing"
    return f"core NOT ready ({why}); {counts}"


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = {True: "ok", False: "--", None: "??"}[c.ok]
        lines.append(f"  {mark}  {c.name:<{width}}  {c.detail}")
        if c.hint:
            lines.append(f"      {'':<{width}}  -> {c.hint}")
    return "\n".join(lines)
