"""`trickles doctor` and the privilege probes behind it (trickles_kit.net.privileges).

The unprivileged tests run a small Python snippet as uid/gid 65534 through
`setpriv --reuid=65534 --regid=65534 --clear-groups` (needs root). Two things must be readable
by that user:

* the package: the checkout (and pytest's tmp_path, mode 0700) may not be, so the package is
  copied into a fresh directory under the system temp dir, chmod a+rX, and put first on the
  child's sys.path (the child runs with `-I`, so PYTHONPATH and the user site are ignored);
* the interpreter: the venv's python may be a symlink into a private directory such as
  root's home (pyenv). setpriv still starts it (it execs before dropping every capability), but the
  child cannot read the interpreter's libpython and stdlib there, and the dynamic loader silently
  picks up the system libpython and /usr/lib/python3.X instead: a different Python than ours.
  So an interpreter is accepted only if the unprivileged child reports the same sys.version and
  stdlib path as the same interpreter run by us; otherwise the system python3 is tried. On this
  project's Debian machines the venv's pyenv python is rejected that way and /usr/bin/python3
  (Debian's 3.11) is used. The snippet needs only the standard library: privileges.py and
  doctor.py import nothing else.

Outside CI, without root these tests skip; with CI=true they never skip (a missing setpriv or
no usable interpreter is a failure).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from trickles_kit.cli import main
from trickles_kit.net import doctor
from trickles_kit.net import privileges as priv

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"
NOBODY = 65534

EXPECTED_CHECKS = [
    "root / CAP_NET_RAW",
    "raw socket, IP protocol 253",
    "raw socket, IP protocol 6",
    "UDP socket on 127.0.0.1",
    "network namespaces",
    "tc qdisc tbf",
    "tc qdisc htb",
    "tc qdisc netem",
    "iptables",
    "nft",
    "tcpdump",
    "tshark",
    "curl",
    "chromium",
    "python: cryptography",
    *(f"python: {p}" for p in ("jupyterlab", "ipywidgets", "plotly", "anywidget", "scapy",
                               "pandas")),
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trickles_kit.cli", *args],
                          capture_output=True, text=True, timeout=120)


# --- the doctor, as this process runs it -------------------------------------------------------


def test_doctor_has_a_check_for_every_item() -> None:
    checks = doctor.run_doctor()
    names = [c.name for c in checks]
    for name in EXPECTED_CHECKS:
        assert name in names, f"no check named {name!r}"
    assert len(names) == len(set(names))
    for c in checks:
        assert c.ok in (True, False, None), c
        assert c.detail, c
        if c.ok is False:
            assert c.hint, f"{c.name} is missing but says nothing about how to get it"


def test_doctor_json_parses_and_matches_exit_code() -> None:
    p = run_cli("doctor", "--json")
    assert p.returncode in (0, 1), p.stderr
    doc = json.loads(p.stdout)
    assert doc["ok"] is (p.returncode == 0)
    assert doc["summary"].startswith("core ")
    names = {c["name"] for c in doc["checks"]}
    assert set(EXPECTED_CHECKS) <= names
    for c in doc["checks"]:
        assert set(c) == {"name", "ok", "detail", "hint", "group"}


def test_doctor_text_ends_with_summary(capsys) -> None:
    rc = main(["doctor"])
    out = capsys.readouterr().out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("trickles doctor: core ")
    assert ("core ready" in last) is (rc == 0)


def test_doctor_is_listed_in_help(capsys) -> None:
    assert main([]) == 2
    assert "doctor" in capsys.readouterr().out


def test_missing_netem_points_to_the_user_space_delay_stage(monkeypatch) -> None:
    monkeypatch.setattr(priv, "qdisc_probe", lambda name: (False, "not in this kernel"))
    monkeypatch.setattr(priv, "which", lambda tool: f"/usr/sbin/{tool}")
    c = doctor._qdisc("netem")
    assert c.ok is False
    assert "user-space delay stage" in c.hint


def test_core_readiness_needs_a_transport_and_cryptography() -> None:
    def checks(raw: bool, udp: bool, crypto: bool) -> list[doctor.Check]:
        return [doctor.Check("raw socket, IP protocol 253", raw, "x"),
                doctor.Check("UDP socket on 127.0.0.1", udp, "x"),
                doctor.Check("python: cryptography", crypto, "x")]

    assert doctor.core_ready(checks(True, True, True)) == (True, ["raw", "udp"])
    assert doctor.core_ready(checks(False, True, True)) == (True, ["udp"])
    assert doctor.core_ready(checks(False, False, True))[0] is False
    assert doctor.core_ready(checks(True, True, False))[0] is False
    assert "NOT ready" in doctor.summary(checks(False, False, True))


# --- the probes ---------------------------------------------------------------------------------


def test_cap_net_raw_is_bit_13_of_capeff(monkeypatch) -> None:
    monkeypatch.setattr(priv, "_effective_caps", lambda: 1 << 13)
    assert priv.has_cap_net_raw()
    monkeypatch.setattr(priv, "_effective_caps", lambda: (1 << 64) - 1 - (1 << 13))
    assert not priv.has_cap_net_raw()
    monkeypatch.setattr(priv, "_effective_caps", lambda: None)
    assert not priv.has_cap_net_raw()


def test_capeff_is_readable_here() -> None:
    caps = priv._effective_caps()
    assert isinstance(caps, int)
    if os.geteuid() == 0:
        assert priv.is_root()


def test_unknown_qdisc_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown qdisc"):
        priv.qdisc_probe("cake")


def test_privilege_error_is_a_permission_error() -> None:
    assert issubclass(priv.PrivilegeError, PermissionError)
    if priv.has_cap_net_raw():
        priv.require_raw("raw")  # no exception with the capability


def test_namespace_probe_agrees_with_kernel_config(monkeypatch) -> None:
    """The active probe (tc in a throwaway namespace) and the passive one (kernel config) agree."""
    cfg = priv.kernel_config()
    if cfg is None or not priv.which("tc") or not priv.can_create_netns()[0]:
        pytest.skip("needs a readable kernel config, tc and the right to create namespaces")
    passive = {q: priv.qdisc_probe(q)[0] for q in ("tbf", "htb", "netem")}
    monkeypatch.setattr(priv, "kernel_config", lambda: None)
    for q, expected in passive.items():
        ok, how = priv.qdisc_probe(q)
        assert ok is expected, (q, how)


# --- as an unprivileged user --------------------------------------------------------------------

_VIEW = ("import json, sys, sysconfig; "
         "print(json.dumps([sys.version, sysconfig.get_path('stdlib'), "
         "sys.version_info >= (3, 8)]))")


def _not_possible(why: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true: {why}")
    pytest.skip(why)


def _as_nobody(setpriv: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/", "LC_ALL": "C.UTF-8"}, **kw,
    )


def _pick_interpreter(setpriv: str) -> tuple[str | None, list[str]]:
    """First interpreter uid 65534 runs as the very same Python we see (see module docstring)."""
    candidates = [sys.executable, "/usr/bin/python3", shutil.which("python3")]
    rejected = []
    for py in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        ours = subprocess.run([py, "-I", "-c", _VIEW], capture_output=True, text=True,
                              timeout=60)
        theirs = _as_nobody(setpriv, [py, "-I", "-c", _VIEW])
        if theirs.returncode != 0:
            rejected.append(f"{py}: fails as uid {NOBODY}: {theirs.stderr.strip()[-200:]}")
        elif ours.stdout != theirs.stdout:
            rejected.append(f"{py}: uid {NOBODY} gets another Python ({theirs.stdout.strip()} "
                            f"instead of {ours.stdout.strip()})")
        elif not json.loads(theirs.stdout)[2]:
            rejected.append(f"{py}: Python too old")
        else:
            return py, rejected
    return None, rejected


def _world_readable_copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for d, _, files in os.walk(dst):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)


@pytest.fixture(scope="module")
def nobody() -> Iterator[tuple[str, str, Path]]:
    """(setpriv, interpreter, directory holding a world-readable copy of trickles_kit)."""
    if os.geteuid() != 0:
        _not_possible("needs root to switch to uid 65534 with setpriv")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        _not_possible("setpriv (util-linux) not found; run: make sysdeps")
    python, rejected = _pick_interpreter(setpriv)
    if python is None:
        _not_possible(f"no interpreter usable by uid {NOBODY}: {'; '.join(rejected)}")
    tmp = Path(tempfile.mkdtemp(prefix="trickles-unpriv-"))
    try:
        os.chmod(tmp, 0o755)
        for parent in tmp.parents:
            if not parent.stat().st_mode & stat.S_IXOTH:
                pytest.fail(f"{parent} is not traversable by others; set TMPDIR to e.g. /tmp")
        _world_readable_copy(ROOT / "trickles_kit", tmp / "trickles_kit")
        shutil.copy(ROOT / "scripts" / "install-system-deps.sh", tmp / "install-system-deps.sh")
        os.chmod(tmp / "install-system-deps.sh", 0o755)
        yield setpriv, python, tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import trickles_kit
from trickles_kit.net import doctor
from trickles_kit.net import privileges as p
out = {"file": trickles_kit.__file__, "root": p.is_root(), "cap": p.has_cap_net_raw(),
       "raw": p.can_open_raw_socket(253)}
try:
    p.require_raw("raw")
except p.PrivilegeError as e:
    out["error"] = str(e)
    out["is_permission_error"] = isinstance(e, PermissionError)
checks = doctor.run_doctor()
out["checks"] = {c.name: c.ok for c in checks}
out["hints"] = {c.name: c.hint for c in checks}
print(json.dumps(out))
"""


def test_require_raw_unprivileged_gives_one_clear_line(nobody) -> None:
    setpriv, python, tmp = nobody
    p = _as_nobody(setpriv, [python, "-I", "-B", "-c", _CHILD, str(tmp)])
    assert p.returncode == 0, f"{python} as uid {NOBODY}: {p.stderr}"
    out = json.loads(p.stdout)
    assert out["file"].startswith(str(tmp)), out["file"]  # the copy, not the checkout
    assert out["root"] is False and out["cap"] is False
    assert out["raw"][0] is False and "Permission" in out["raw"][1]
    msg = out.get("error")
    assert msg is not None, "require_raw did not raise without CAP_NET_RAW"
    assert out["is_permission_error"]
    assert "\n" not in msg
    assert "CAP_NET_RAW" in msg and "--transport udp" in msg
    assert msg.startswith("raw transport: raw sockets need root or CAP_NET_RAW")
    # the doctor, unprivileged: raw sockets missing (with the same hint), UDP fine
    checks, hints = out["checks"], out["hints"]
    assert checks["root / CAP_NET_RAW"] is False
    assert checks["raw socket, IP protocol 253"] is False
    assert checks["raw socket, IP protocol 6"] is False
    assert checks["UDP socket on 127.0.0.1"] is True
    assert "--transport udp" in hints["raw socket, IP protocol 253"]


def test_install_script_changes_nothing_when_not_root(nobody) -> None:
    setpriv, _, tmp = nobody
    p = _as_nobody(setpriv, ["bash", str(tmp / "install-system-deps.sh")])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "apt-get update" not in p.stdout  # never tries to install
    assert "nothing to do" in p.stdout or "not root: nothing installed" in p.stdout
