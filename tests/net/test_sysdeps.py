"""A fresh machine: the set-up installs (root) or names (user) the system tools, and every live
path checks for its tools first and says in one line what is missing and how to install it.

The set-up script runs with a PATH that has none of the tools and fake `id`, `dpkg-query`,
`apt-get` and `debconf-set-selections`, so the root path (update, install, verify) and the user
path (print the command, change nothing) are exercised without installing anything. The live
paths are checked with the tools hidden from this process (`shutil.which` sees an empty PATH):
each raises `MissingToolError` before building anything, and notebook 07 falls back to the
committed results under a banner.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from wire_helpers import REPO, need_root, need_tool, private_netns

from trickles_kit.net import privileges, sysdeps

SCRIPT = REPO / "scripts" / "install-system-deps.sh"
WANTED = re.findall(r'^\s+"([\w.-]+):([\w.-]+)"$', SCRIPT.read_text(), re.M)


# ------------------------------------------------------------------------ the set-up script
def _exe(path: Path, text: str) -> None:
    path.write_text("#!" + shutil.which("bash") + "\n" + text)  # type: ignore[operator]
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def fresh_bin(tmp: Path, uid: int, apt: bool = True) -> tuple[Path, Path]:
    """A PATH directory with bash and date, a fake `id -u` printing `uid`, a `dpkg-query` that
    knows no package and (`apt`) an `apt-get` that logs its arguments and, on install, puts
    each package's command here. Returns (the directory, apt-get's log)."""
    bindir, log = tmp / "bin", tmp / "apt.log"
    bindir.mkdir()
    for tool in ("bash", "date"):
        os.symlink(shutil.which(tool), bindir / tool)  # type: ignore[arg-type]
    _exe(bindir / "id", f'[ "$1" = -u ] && echo {uid} || echo "uid={uid}"\n')
    _exe(bindir / "dpkg-query", "exit 1\n")
    _exe(bindir / "debconf-set-selections",
         f'while IFS= read -r line; do echo "$line" >> "{log}"; done\n')
    if apt:
        cmds = " ".join(f"[{pkg}]={cmd}" for pkg, cmd in WANTED)
        _exe(bindir / "apt-get", f"""declare -A CMD=({cmds})
echo "apt-get $*" >> "{log}"
for a in "$@"; do
    if [ -n "${{CMD[$a]:-}}" ]; then
        printf '#!/bin/sh\\nexit 0\\n' > "{bindir}/${{CMD[$a]}}"
        {shutil.which("chmod")} +x "{bindir}/${{CMD[$a]}}"
    fi
done
""")
    return bindir, log


def run_script(bindir: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(bindir), "SYSDEPS_SBIN": "", "LC_ALL": "C"}
    return subprocess.run([str(bindir / "bash"), str(SCRIPT)], capture_output=True, text=True,
                          env=env, timeout=60)


def test_the_script_lists_what_it_wants() -> None:
    names = [pkg for pkg, _ in WANTED]
    assert {"tcpdump", "tshark", "iptables", "nftables", "iproute2"} <= set(names), names


def test_fresh_machine_as_root_installs_and_says_what(tmp_path: Path) -> None:
    bindir, log = fresh_bin(tmp_path, uid=0)
    p = run_script(bindir)
    assert p.returncode == 0, p.stdout + p.stderr
    pkgs = " ".join(pkg for pkg, _ in WANTED)
    assert f"install-system-deps: missing: {pkgs}" in p.stdout
    assert f"apt-get install -y --no-install-recommends {pkgs}" in p.stdout
    assert re.search(r"install-system-deps: installed .* in \d+ s", p.stdout), p.stdout
    calls = [ln for ln in log.read_text().splitlines() if ln.startswith("apt-get")]
    assert [c.split()[-1] for c in calls][:1] == ["update"], calls
    assert calls[1].endswith(f"install --no-install-recommends {pkgs}"), calls
    assert "wireshark-common/install-setuid boolean false" in log.read_text()
    # a second run: everything is there now, nothing is installed again
    p = run_script(bindir)
    assert p.returncode == 0 and "nothing to do" in p.stdout, p.stdout
    assert len([ln for ln in log.read_text().splitlines() if ln.startswith("apt-get")]) == 2


def test_fresh_machine_as_a_user_changes_nothing_and_says_how(tmp_path: Path) -> None:
    bindir, log = fresh_bin(tmp_path, uid=1000)
    p = run_script(bindir)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "not root: nothing installed" in p.stdout
    assert "sudo apt-get install -y tcpdump tshark iptables" in p.stdout
    assert not log.exists(), "apt-get must not run for a user"


def test_no_apt_get_is_said_not_failed(tmp_path: Path) -> None:
    bindir, log = fresh_bin(tmp_path, uid=0, apt=False)
    p = run_script(bindir)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no apt-get on this machine" in p.stdout


def test_make_test_runs_the_set_up_first() -> None:
    """`make test` runs the set-up scripts (as CI does) before pytest; SYSDEPS=no skips them."""
    make = need_tool("make", "apt-get install make")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SYSDEPS", "MAKEFLAGS")}
    out = subprocess.run([make, "-n", "test"], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=60).stdout
    lines = out.splitlines()
    setup = next(i for i, ln in enumerate(lines) if "install-system-deps.sh" in ln)
    tests = next(i for i, ln in enumerate(lines) if "pytest" in ln)
    assert setup < tests, out
    out = subprocess.run([make, "-n", "test", "SYSDEPS=no"], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=60).stdout
    assert "install-system-deps.sh" not in out and "pytest" in out, out


# ------------------------------------------------------------------------ live paths
@pytest.fixture
def no_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This process finds no system tool: an empty PATH, no sbin directories."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(privileges, "_SBIN", ())


def _one_line(e: BaseException, *words: str) -> str:
    msg = str(e)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_require_names_the_tools_and_the_install_command(no_tools) -> None:
    with pytest.raises(sysdeps.MissingToolError) as ei:
        sysdeps.require(["tcpdump", "ip", "tc", "iptables"], "the thing")
    msg = _one_line(ei.value, "the thing: tcpdump, ip, tc, iptables not installed",
                    "sudo apt-get install -y tcpdump iproute2 iptables", "make sysdeps")
    assert msg.count("iproute2") == 1


def test_a_tool_off_path_is_said_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    _exe(sbin / "tcpdump", "exit 0\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(privileges, "_SBIN", (str(sbin),))
    msg = sysdeps.problem(["tcpdump"], "x")
    assert msg and f"installed in {sbin}, which is not on PATH" in msg, msg


def test_services_bed_checks_before_building(no_tools) -> None:
    from trickles_kit.services.replicas import ServiceBed

    bed = ServiceBed("failover")
    with pytest.raises(sysdeps.MissingToolError) as ei:
        bed.__enter__()
    _one_line(ei.value, "services demo", "tcpdump", "apt-get install -y")
    assert not bed.workdir.exists(), "the work directory is removed"
    assert not bed.topo.namespaces


def test_router_capture_checks_tcpdump(no_tools, tmp_path: Path) -> None:
    from trickles_kit.services.capture import RouterCapture

    with pytest.raises(sysdeps.MissingToolError) as ei:
        RouterCapture(None, "r", {"s1": "v1"}, tmp_path, "10.99.0.1").start()
    _one_line(ei.value, "tcpdump", "sudo apt-get install -y tcpdump")


def test_testbed_and_topology_check_first(no_tools) -> None:
    from trickles_kit.net.testbed import Testbed, TestbedConfig
    from trickles_kit.net.topology import Topology

    with pytest.raises(sysdeps.MissingToolError) as ei, Testbed(TestbedConfig()):
        pass
    _one_line(ei.value, "testbed", "tcpdump", "tc", "iptables")
    with pytest.raises(sysdeps.MissingToolError), Topology(tag="x"):
        pass


def test_capture_and_namespace_pair_check_first(no_tools, tmp_path: Path) -> None:
    from trickles_kit.capture.live import LiveCapture, LiveCaptureError
    from trickles_kit.net.netns import NetnsPair

    with pytest.raises(LiveCaptureError) as ei:
        LiveCapture("lo", tmp_path / "x.pcap").command()
    _one_line(ei.value, "tcpdump", "sudo apt-get install -y tcpdump")
    with pytest.raises(sysdeps.MissingToolError) as ei, NetnsPair(tag="x"):
        pass
    _one_line(ei.value, "ip, iptables", "sudo apt-get install -y iproute2 iptables")


def test_rst_rule_names_iptables(no_tools) -> None:
    from trickles_kit.net.rst import RstRuleError, suppress_rsts

    with pytest.raises(RstRuleError) as ei, suppress_rsts(9, "server", verbose=False):
        pass
    _one_line(ei.value, "iptables", "apt-get install -y iptables")


def test_services_cli_says_it_in_one_line(no_tools, monkeypatch, capsys) -> None:
    from trickles_kit import cli

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cli.main(["services", "demo", "failover", "--no-save"]) == 2
    err = capsys.readouterr().err.strip()
    _one_line(Exception(err), "tcpdump", "apt-get install -y")


def test_notebook_07_falls_back_with_a_banner(no_tools, monkeypatch, capsys) -> None:
    """As root without the tools: the committed result, and a banner naming what is missing;
    asked to run live anyway, one line naming it."""
    from trickles_kit.services import lab

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    ok, why = lab.live_check()
    assert not ok and "tcpdump" in why and "apt-get install" in why, why
    res = lab.run("failover", live=None)
    assert res == lab.saved("failover")
    out = capsys.readouterr().out
    assert "Committed result, not a live run" in out and "tcpdump" in out, out
    with pytest.raises(sysdeps.MissingToolError) as ei:
        lab.run("failover", live=True)
    _one_line(ei.value, "tcpdump", "apt-get install -y")


def test_notebook_07_falls_back_when_the_live_run_fails(monkeypatch, capsys) -> None:
    from trickles_kit.services import lab, scenarios

    def broken(**kw):
        raise RuntimeError("tcpdump on v1r1 exited: 1: tcpdump: permission denied")

    monkeypatch.setattr(lab, "live_check", lambda: (True, "ok"))
    monkeypatch.setitem(scenarios.SCENARIOS, "failover", broken)
    res = lab.run("failover", "tcp")
    assert res == lab.saved("failover", "tcp")
    out = capsys.readouterr().out
    assert "the live run failed" in out and "permission denied" in out, out


def test_notebook_06_says_what_is_missing(no_tools, monkeypatch) -> None:
    from trickles_kit.labs import benchmark

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    ok, why = benchmark.can_run_live()
    assert not ok and "apt-get install -y" in why and "committed" in why, why
    assert benchmark.run_small() is None


def test_rst_rule_leaves_no_table_behind() -> None:
    """iptables-nft creates `table ip filter` for the first rule and keeps it: the rule code
    removes what its rule created (here in a fresh namespace, so the host is never touched)."""
    need_root("firewall rules in a namespace")
    for tool in ("iptables", "nft"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing") if os.environ.get("CI") == "true" else \
                pytest.skip(f"{tool} is not installed: run `make sysdeps` (as root)")
    code = ("from trickles_kit.net.rst import suppress_rsts\n"
            "with suppress_rsts(9, 'server', verbose=False), "
            "suppress_rsts(9, 'client', verbose=False): pass\n")
    with private_netns("rst") as ns:
        p = subprocess.run([*ns, sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        left = subprocess.run([*ns, "nft", "list", "ruleset"], capture_output=True, text=True,
                              timeout=30)
    assert left.stdout.strip() == "", left.stdout
