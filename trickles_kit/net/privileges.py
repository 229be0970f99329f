"""What this process and this machine allow: privileges, raw sockets, namespaces, qdiscs, firewalls.

Every function here only looks. None leaves anything behind: a probe that needs a network
namespace runs inside a throwaway one (`unshare -n CMD`: the namespace dies with CMD), sockets are
closed at once, and qdisc support is read from the kernel configuration before anything is tried,
so no kernel module gets loaded just to answer a question. Only the standard library is used, so
`trickles doctor` works before the virtualenv is complete.
"""

from __future__ import annotations

import gzip
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

CAP_NET_RAW = 13
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_TIMEOUT = 10.0

# Arguments that make `tc qdisc add dev lo root <name> ...` valid, for the functional probe.
_QDISC_ARGS: dict[str, tuple[str, ...]] = {
    "tbf": ("tbf", "rate", "1mbit", "burst", "32kb", "latency", "50ms"),
    "htb": ("handle", "1:", "htb"),
    "netem": ("netem", "delay", "1ms"),
}


class PrivilegeError(PermissionError):
    """An operation needs privileges this process lacks; str() is one line saying what to do."""


def is_root() -> bool:
    return os.geteuid() == 0


def _effective_caps() -> int | None:
    """CapEff from /proc/self/status as an integer, or None if it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split(":", 1)[1].strip(), 16)
    except (OSError, ValueError):
        return None
    return None


def has_cap_net_raw() -> bool:
    """True if CAP_NET_RAW (bit 13) is in this process's effective capability set."""
    caps = _effective_caps()
    return caps is not None and bool(caps >> CAP_NET_RAW & 1)


def can_open_raw_socket(proto: int = 253) -> tuple[bool, str]:
    """Try socket(AF_INET, SOCK_RAW, proto) and close it: (True, "") or (False, the error)."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    except OSError as e:
        return False, f"{type(e).__name__}: {e.strerror or e}"
    s.close()
    return True, ""


def can_open_udp_socket() -> tuple[bool, str]:
    """Bind a UDP socket to 127.0.0.1 on an ephemeral port and close it."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
    except OSError as e:
        return False, f"{type(e).__name__}: {e.strerror or e}"
    return True, ""


def which(tool: str) -> str | None:
    """Full path of `tool` on PATH, else in the sbin directories (often off a user's PATH)."""
    return shutil.which(tool) or shutil.which(tool, path=os.pathsep.join(_SBIN))


def _run(argv: list[str]) -> tuple[int, str]:
    """Run a short probe command; (returncode, stderr+stdout). 127 if it cannot be started."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return 127, str(e)
    return p.returncode, (p.stderr.strip() + "\n" + p.stdout.strip()).strip()


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _in_throwaway_netns(argv: list[str]) -> tuple[int, str] | None:
    """Run argv inside a new network namespace that disappears when argv exits.

    None if no namespace could be made (no `unshare`, or not allowed), so the caller can fall
    back to a passive check. Needs CAP_SYS_ADMIN (root).
    """
    unshare = which("unshare")
    tool = which(argv[0])
    if unshare is None or tool is None:
        return None
    rc, out = _run([unshare, "--net", "--", tool, *argv[1:]])
    if rc != 0 and "unshare failed" in out:
        return None
    return rc, out


def can_create_netns() -> tuple[bool, str]:
    """Can this process create network namespaces? Tried with `unshare -n true` (nothing stays)."""
    unshare = which("unshare")
    if unshare is None:
        return False, "unshare (util-linux) not found"
    rc, out = _run([unshare, "--net", "--", "true"])
    if rc == 0:
        return True, "unshare -n works"
    rc_user, _ = _run([unshare, "--user", "--map-root-user", "--net", "--", "true"])
    if rc_user == 0:
        return False, ("only inside an unprivileged user namespace (unshare -rn); "
                       f"unshare -n: {_first_line(out)}")
    return False, _first_line(out) or f"unshare -n exited with {rc}"


def kernel_config() -> dict[str, str] | None:
    """The running kernel's build configuration (CONFIG_X -> 'y'/'m'/'n'/value), if readable."""
    candidates = [Path("/proc/config.gz"), Path(f"/boot/config-{platform.release()}")]
    for path in candidates:
        try:
            if path.suffix == ".gz":
                with gzip.open(path, "rt") as f:
                    text = f.read()
            else:
                text = path.read_text()
        except OSError:
            continue
        cfg: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                k, v = line.split("=", 1)
                cfg[k] = v.strip('"')
            elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                cfg[line[2:-len(" is not set")]] = "n"
        cfg["_source"] = str(path)
        return cfg
    return None


def _module_file_exists(module: str) -> bool:
    base = Path("/lib/modules") / platform.release()
    if not base.is_dir():
        return False
    return any(base.rglob(f"{module}.ko*"))


def qdisc_probe(name: str) -> tuple[bool | None, str]:
    """Is the qdisc `name` (tbf, htb, netem) usable? (answer, how we know). None = cannot tell.

    Order, from passive to active: the kernel configuration (built in, module file present, or
    not set); then, only if that is unreadable, adding the qdisc to `lo` in a throwaway network
    namespace; then /sys/module/sch_<name>.
    """
    if name not in _QDISC_ARGS:
        raise ValueError(f"unknown qdisc {name!r} (known: {', '.join(_QDISC_ARGS)})")
    module = f"sch_{name}"
    option = f"CONFIG_NET_SCH_{name.upper()}"
    cfg = kernel_config()
    if cfg is not None and option in cfg:
        value, src = cfg[option], cfg["_source"]
        if value == "y":
            return True, f"built into the kernel ({option}=y in {src})"
        if value == "m":
            if _module_file_exists(module) or Path("/sys/module", module).is_dir():
                return True, f"kernel module {module} ({option}=m)"
            return False, f"{option}=m but no {module} module file for {platform.release()}"
        return False, f"not in this kernel ({option} is not set)"
    if which("tc") is not None:
        r = _in_throwaway_netns(["tc", "qdisc", "add", "dev", "lo", "root", *_QDISC_ARGS[name]])
        if r is not None:
            rc, out = r
            if rc == 0:
                return True, "tc qdisc add works (tried in a throwaway network namespace)"
            if "unknown" in out.lower():
                return False, f"kernel does not know it: {_first_line(out)}"
    if Path("/sys/module", module).is_dir():
        return True, f"/sys/module/{module} exists"
    return None, "cannot tell (no kernel config, no namespace to try it in)"


def qdisc_available(name: str) -> bool | None:
    """True/False if the kernel has the qdisc, None if it cannot be determined."""
    return qdisc_probe(name)[0]


def firewall_probe(tool: str) -> tuple[bool, str]:
    """`iptables` or `nft`: is the tool there and does the kernel side answer?

    As root the ruleset of a throwaway network namespace is listed (the host's tables are not
    touched); otherwise only the binary is checked (`--version`).
    """
    listing = {"iptables": ["iptables", "-w", "-n", "-L", "INPUT"],
               "nft": ["nft", "list", "ruleset"]}
    if tool not in listing:
        raise ValueError(f"unknown firewall tool {tool!r}")
    path = which(tool)
    if path is None:
        return False, f"{tool} not found"
    rc, out = _run([path, "--version"])
    version = _first_line(out) if rc == 0 else ""
    if rc != 0:
        return False, f"{path} --version failed: {_first_line(out)}"
    r = _in_throwaway_netns(listing[tool])
    if r is None:
        return True, f"{version} (kernel side not checked: needs root)"
    rc, out = r
    if rc == 0:
        return True, f"{version}; works in a network namespace"
    return False, f"{version}; listing rules failed: {_first_line(out)}"


def iptables_available() -> bool:
    return firewall_probe("iptables")[0]


def nft_available() -> bool:
    return firewall_probe("nft")[0]


def raw_hint() -> str:
    """How to get raw sockets, as one line."""
    interp = os.path.realpath(sys.executable) if sys.executable else "python3"
    argv0 = sys.argv[0] if sys.argv else ""
    prog = argv0 if os.path.basename(argv0) == "trickles" else shutil.which("trickles")
    prog = prog or "trickles"
    return (f"try: sudo {prog} ..., or sudo setcap cap_net_raw+ep {interp}, "
            f"or use --transport udp")


def require_raw(transport_name: str = "raw") -> None:
    """Raise PrivilegeError (one line) unless this process may open raw IP sockets."""
    if has_cap_net_raw():
        return
    ok, _ = can_open_raw_socket()
    if ok:  # e.g. /proc/self/status unreadable, but the kernel allows it
        return
    raise PrivilegeError(
        f"{transport_name} transport: raw sockets need root or CAP_NET_RAW ({raw_hint()})"
    )
