"""Suite-wide hooks: what was skipped and how to enable it, and nothing of ours left behind.

* One line at the end of the run names what was skipped, grouped by what it needs (root, a
  system tool, the lab packages) and the command that enables it. Outside CI a missing privilege
  or tool skips; with CI=true nothing skips (the tests themselves fail instead). `make test`
  runs pytest twice (pure, compiled): with TRICKLES_SKIP_LOG set each run logs its skips there
  and tests/skipline.py prints the one line for both at the end.
* The run must not change the machine outside the checkout. The controller (not an xdist
  worker) snapshots, at session start, the firewall rules (nft and iptables) and the qdiscs of
  the interfaces that exist, and gives the run a temporary directory of its own (TMPDIR) with an
  `ip` first on PATH that notes every namespace the run adds. At session end a new rule or qdisc,
  a namespace the run added, an entry with our prefixes (`tk-`, `trickles-`) still in that
  directory, or a process of this run still alive (trickles serve/fetch, tcpdump, tshark,
  jupyter/ipykernel, chromium: found by an environment marker every child inherits) fails the
  run with a list of what is left; then the directory goes. Only the firewall and qdisc
  snapshots can see another program's changes (nothing says whose a rule is);
  `TRICKLES_LEAK_CHECK=0` turns the whole check off.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from skipline import SKIP_LOG, skip_summary

from trickles_kit.core import statecache

RUN_ENV = "TRICKLES_TEST_RUN"
# every child process inherits it (xdist workers, servers, kernels, browsers): it marks what is
# ours among the machine's processes
os.environ.setdefault(RUN_ENV, uuid.uuid4().hex)

TEMP_PREFIXES = ("tk-", "trickles-")
PROGRAMS = ("trickles", "tcpdump", "tshark", "dumpcap", "jupyter", "chromium", "chrome")
MODULES = ("trickles_kit", "ipykernel", "jupyter")
GRACE_S = 10.0  # what is being torn down at session end gets this long to go


# ------------------------------------------------------------------------------- skip summary
def _reason(rep: pytest.TestReport) -> str:
    lr = rep.longrepr
    text = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return text.removeprefix("Skipped: ")




# ------------------------------------------------------------------------------- host state
def _out(argv: list[str]) -> str:
    """stdout of `argv`, or "" when the tool is missing or refuses (no privileges)."""
    if shutil.which(argv[0]) is None:
        return ""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return p.stdout if p.returncode == 0 else ""


def _firewall() -> set[str]:
    lines = {f"nft: {ln.strip()}" for ln in _out(["nft", "-s", "list", "ruleset"]).splitlines()
             if ln.strip() and ln.strip() != "}"}
    for ln in _out(["iptables-save"]).splitlines():
        if ln.strip() and not ln.startswith("#") and ln != "COMMIT":
            lines.add("iptables: " + re.sub(r"\s*\[\d+:\d+\]", "", ln.strip()))
    return lines


def _namespaces() -> set[str]:
    return {ln.split()[0] for ln in _out(["ip", "netns", "list"]).splitlines() if ln.strip()}


def _qdiscs(devs: set[str] | None) -> tuple[set[str], set[str]]:
    """(qdisc lines of `devs`, or of every interface when None; the interfaces seen)."""
    lines, seen = set(), set()
    for ln in _out(["tc", "qdisc", "show"]).splitlines():
        m = re.search(r"\bdev (\S+)", ln)
        if not m:
            continue
        seen.add(m.group(1))
        if devs is None or m.group(1) in devs:
            lines.add(re.sub(r"\s*refcnt \d+", "", ln.strip()))
    return lines, seen


def _temp_left(tmp: Path) -> list[str]:
    """Entries with our prefixes in the run's temporary directory (what nobody removed)."""
    try:
        return sorted(str(p) for p in tmp.iterdir() if p.name.startswith(TEMP_PREFIXES))
    except OSError:
        return []


def is_ours(argv: list[str]) -> bool:
    """A program of PROGRAMS (`trickles`, `tcpdump`, `jupyter-lab`...) or Python running a
    module of MODULES (`-m trickles_kit.cli`, `-m ipykernel_launcher`): what a test starts.
    Names only — a checkout called trickles-kit puts "trickles" in every path."""
    if not argv:
        return False
    prog = os.path.basename(argv[0])
    if prog.startswith(PROGRAMS):
        return True
    if prog.startswith("python"):
        rest = argv[1:]
        if "-m" in rest[:-1]:
            return rest[rest.index("-m") + 1].startswith(MODULES)
        script = next((a for a in rest if not a.startswith("-")), "")
        return os.path.basename(script).startswith(PROGRAMS)
    return False


def _our_processes() -> list[str]:
    """'pid: command line' of live processes that carry this run's marker and are ours."""
    marker = f"{RUN_ENV}={os.environ[RUN_ENV]}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if marker in env and is_ours([a for a in argv if a]):
            found.append(f"{d.name}: {' '.join(argv).strip()[:200]}")
    return found


def _ip_shim(tmp: Path) -> Path | None:
    """A directory with an `ip` that notes each `ip netns add NAME` of this run in
    `tmp/netns-added`, then runs the real one: at the end, a namespace of this run that still
    exists is known by name, even while other runs create and delete theirs."""
    real = shutil.which("ip") or shutil.which("ip", path="/usr/local/sbin:/usr/sbin:/sbin")
    if real is None:
        return None
    bindir = tmp / ".bin"
    bindir.mkdir()
    shim = bindir / "ip"
    shim.write_text(f"""#!/bin/sh
[ "$1" = netns ] && [ "$2" = add ] && echo "$3" >> "{tmp / 'netns-added'}"
exec "{real}" "$@"
""")
    shim.chmod(0o755)
    return bindir


def _namespaces_left(tmp: Path) -> list[str]:
    """Namespaces this run added (through the `ip` shim) that still exist."""
    try:
        added = set((tmp / "netns-added").read_text().split())
    except OSError:
        return []
    return sorted(added & _namespaces())


@dataclass
class HostState:
    """What other programs share with this run and a test may change: diffed start to end."""

    firewall: set[str] = field(default_factory=set)
    qdiscs: set[str] = field(default_factory=set)
    devs: set[str] = field(default_factory=set)

    @classmethod
    def now(cls, devs: set[str] | None = None) -> HostState:
        qd, seen = _qdiscs(devs)
        return cls(_firewall(), qd, seen if devs is None else devs)

    def left_since(self, start: HostState) -> list[str]:
        """What is here now and was not at `start`, one line each."""
        return ([f"firewall {r}" for r in sorted(self.firewall - start.firewall)]
                + [f"qdisc {q}" for q in sorted(self.qdiscs - start.qdiscs)])


_START = pytest.StashKey[HostState]()
_TMP = pytest.StashKey[Path]()
_LEFT = pytest.StashKey[list]()


def _leak_check_on(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and os.environ.get("TRICKLES_LEAK_CHECK") != "0"


def pytest_configure(config: pytest.Config) -> None:
    """The controller gives the run a temporary directory of its own (TMPDIR, inherited by the
    workers and everything they start), so what is left in it is this run's, whatever else the
    machine runs meanwhile; pytest's own tmp_path stays in the usual place.

    The package reads no environment (its entry points do): the suite, like the `trickles`
    command, turns TRICKLES_STATE_CACHE into the default cache size, in every process, so
    `TRICKLES_STATE_CACHE=1 pytest ...` runs the engines with the cache on."""
    statecache.set_default_entries(statecache.entries_from_text(
        os.environ.get(statecache.ENV, "")))
    if not _leak_check_on(config):
        return
    system_tmp = tempfile.gettempdir()
    tmp = Path(tempfile.mkdtemp(prefix="tk-pytest-", dir=system_tmp))
    tmp.chmod(0o1777)  # like /tmp: the tests that drop to uid 65534 make directories here too
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", system_tmp)
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    shim = _ip_shim(tmp)
    if shim is not None:
        os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
    config.stash[_TMP] = tmp


def pytest_unconfigure(config: pytest.Config) -> None:
    tmp = config.stash.get(_TMP, None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    if _leak_check_on(session.config):  # before xdist starts its workers
        session.config.stash[_START] = HostState.now()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the workers are gone: whatever of ours is still here fails the run."""
    start = session.config.stash.get(_START, None)
    if start is None:
        return
    tmp = session.config.stash.get(_TMP, None)
    end = time.monotonic() + GRACE_S
    while True:
        left = HostState.now(start.devs).left_since(start)
        left += [f"network namespace {n}" for n in (_namespaces_left(tmp) if tmp else [])]
        left += [f"temporary {t}" for t in (_temp_left(tmp) if tmp else [])]
        left += [f"process {p}" for p in _our_processes()]
        if not left or time.monotonic() >= end:
            break
        time.sleep(0.5)
    session.config.stash[_LEFT] = left
    if left and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int,
                            config: pytest.Config) -> Generator[None, None, None]:
    """After pytest's own summary: the leftovers (if any), then the one skip line."""
    yield
    left = config.stash.get(_LEFT, [])
    if left:
        terminalreporter.section("left behind by this run", sep="=", red=True, bold=True)
        for line in left:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"{len(left)} thing(s) of ours outlived the run (tests must "
                                    "undo every system change): the run fails", red=True)
    reasons = [_reason(r) for r in terminalreporter.stats.get("skipped", [])]
    log = os.environ.get(SKIP_LOG)
    if log and hasattr(config, "workerinput"):
        return  # an xdist worker: its controller logs the run's skips once
    if log:  # `make test` runs pytest twice: it prints one line for both at the end
        with open(log, "a") as f:
            f.writelines(r.replace("\n", " ") + "\n" for r in reasons)
        return
    line = skip_summary(reasons)
    if line:
        terminalreporter.write_line(line, yellow=True, bold=True)
