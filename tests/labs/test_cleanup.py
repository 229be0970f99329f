"""Lab runs leave no temporary directory behind: not at exit, not when the kernel stops.

A tour session (`LiveSession`) makes `trickles-lab-*` and notebook 06's small run
`tk-bench-small-*`. Both go when the run is done (the small run) or when the interpreter exits —
normally, on a SIGTERM, and when Jupyter shuts a kernel down — even if the notebook's cleanup
cell never ran.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_notebooks import LAB, _need, isolated_jupyter  # noqa: F401 - a fixture

from trickles_kit.labs import cleanup

MAKE_SESSION = ("from trickles_kit.labs.session import LiveSession\n"
                "s = LiveSession(size=1000, transport='sim')\n"
                "print(s.workdir, flush=True)\n")


def _gone(path: Path, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while path.exists() and time.monotonic() < end:
        time.sleep(0.05)
    return not path.exists()


def test_registered_directories_and_processes_go_at_exit(tmp_path: Path) -> None:
    code = ("import subprocess, sys\n"
            "from trickles_kit.labs import cleanup\n"
            "d = cleanup.make('tk-cleanup-test-'); (d / 'f').write_text('x')\n"
            "keep = cleanup.make('tk-cleanup-test-'); cleanup.remove(keep)\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "cleanup.track(p)\n"
            "print(d, keep, p.pid, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    d, keep, pid = out.stdout.split()
    assert not Path(keep).exists(), "remove() removes at once"
    assert not Path(d).exists(), "a registered directory outlived the interpreter"
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", "a tracked process survived"


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_a_session_directory_goes_with_the_process(how: str) -> None:
    code = MAKE_SESSION + "import sys; sys.stdin.read()\n"  # until stdin closes, or a signal
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        workdir = Path(p.stdout.readline().strip())
        assert workdir.name.startswith("trickles-lab-") and workdir.exists()
        if how == "sigterm":
            p.send_signal(signal.SIGTERM)
        else:
            p.stdin.close()
        rc = p.wait(timeout=60)
        assert rc == (-signal.SIGTERM if how == "sigterm" else 0)  # dies as it would have
        assert _gone(workdir, 5), f"{workdir} outlived the process ({how})"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def test_a_given_workdir_is_left_to_its_owner(tmp_path: Path) -> None:
    from trickles_kit.labs.session import LiveSession

    (tmp_path / "mine").mkdir()
    s = LiveSession(size=1000, transport="sim", workdir=str(tmp_path / "mine"))
    assert str(tmp_path / "mine") not in cleanup._dirs  # not removed at exit
    s.cleanup()
    assert not (tmp_path / "mine").exists()


def test_a_kernel_shutdown_removes_the_session_directory(isolated_jupyter) -> None:  # noqa: F811
    """The student never runs `session.cleanup()`; the kernel is shut down (or restarted)."""
    for m in LAB:
        _need(m)
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        out: list[str] = []
        reply = kc.execute_interactive(
            MAKE_SESSION, timeout=120,
            output_hook=lambda msg: out.append(msg["content"].get("text", "")))
        assert reply["content"]["status"] == "ok", reply["content"]
        workdir = Path("".join(out).strip())
        assert workdir.name.startswith("trickles-lab-") and workdir.exists(), out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)  # what Jupyter does: a shutdown request, then waits
    assert _gone(workdir), f"{workdir} outlived the kernel"


def test_notebook_06_small_run_removes_its_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    from trickles_kit.bench import memory
    from trickles_kit.labs import benchmark

    seen: list[Path] = []

    def fake_run(quick: bool, out: Path, **kw) -> dict:
        seen.append(out)
        (out / "memory.json").write_text("{}")
        (out / "memory.html").write_text("<html></html>")
        if len(seen) == 2:
            raise RuntimeError("a run that fails halfway")
        return {"summary": {}}

    monkeypatch.setattr(benchmark, "can_run_live", lambda: (True, "yes"))
    monkeypatch.setattr(memory, "run", fake_run)
    assert benchmark.run_small(levels=(1,)) == {"summary": {}}
    with pytest.raises(RuntimeError):
        benchmark.run_small(levels=(1,))
    assert len(seen) == 2 and all(d.name.startswith("tk-bench-small-") for d in seen)
    assert not any(d.exists() for d in seen)
