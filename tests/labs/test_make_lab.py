"""`make lab` — the README's first command — reaches a running JupyterLab, as root too."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from trickles_kit.testing.browser import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_make_lab_serves_the_tour(tmp_path: Path) -> None:
    pytest.importorskip("jupyterlab", reason="make lab-venv installs JupyterLab")
    if not (ROOT / ".venv" / ".installed-lab").exists():
        pytest.skip("run make lab-venv first (make test does)")
    port, token = free_port(), secrets.token_hex(8)
    env = {**os.environ}
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR"):
        env[var] = str(tmp_path / var.lower())
    log = tmp_path / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "-s", "lab", f"LAB_ARGS=--ServerApp.port={port} "
             f"--ServerApp.token={token} --ServerApp.port_retries=0"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status = None
        end = time.monotonic() + 90  # a ceiling for a slow start, not a speed requirement
        while time.monotonic() < end and proc.poll() is None:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                                         headers={"Authorization": f"token {token}"})
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    status = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.5)
        text = log.read_text(errors="replace")
        assert status is not None, text[-2000:]
        assert "Running as root is not recommended" not in text
        if os.geteuid() == 0:
            assert text.count("make lab: running as root, passing --allow-root") == 1, text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
