"""plotly.js's basic bundle for the live views: found, fetched with npm, used by `show`."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path
from unittest import mock

import plotly.graph_objects as go
import pytest

from trickles_kit.viz import figures as F
from trickles_kit.viz import plotly_bundle as PB
from trickles_kit.viz import stream

FAKE_JS = b"/**\n* plotly.js (basic) v" + PB.plotly_js_version().encode() + b"\n*/\nvar x = 1;\n"


def _fake_npm(tmp: Path, member: str = PB.MEMBER, body: bytes = FAKE_JS, rc: int = 0) -> Path:
    """A stand-in `npm` on PATH: `npm pack SPEC --pack-destination DIR` writes a tarball."""
    tgz = tmp / "pkg.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    bindir = tmp / "bin"
    bindir.mkdir()
    npm = bindir / "npm"
    npm.write_text(f"""#!/bin/sh
echo "$@" > "{tmp}/args"
[ {rc} -ne 0 ] && {{ echo "npm error 404 Not Found" >&2; exit {rc}; }}
while [ $# -gt 0 ]; do [ "$1" = --pack-destination ] && cp "{tgz}" "$2/x.tgz"; shift; done
""")
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)
    return bindir


def test_fetch_stores_the_bundle_matching_plotly_python(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_fake_npm(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    dest = tmp_path / "out" / "basic.js"
    assert PB.fetch(dest) == dest
    assert dest.read_bytes() == FAKE_JS
    args = (tmp_path / "args").read_text().split()
    assert f"{PB.PACKAGE}@{PB.plotly_js_version()}" in args  # the same version as the figures'


@pytest.mark.parametrize("kw, msg", [({"rc": 1}, "404"), ({"member": "package/other.js"}, "has no"),
                                     ({"body": b"<html>not js</html>"}, "does not look")])
def test_fetch_fails_with_a_clear_message(tmp_path, monkeypatch, kw, msg):
    monkeypatch.setenv("PATH", f"{_fake_npm(tmp_path, **kw)}{os.pathsep}{os.environ['PATH']}")
    dest = tmp_path / "basic.js"
    with pytest.raises(RuntimeError, match=msg):
        PB.fetch(dest)
    assert not dest.exists()


def test_fetch_without_npm_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="npm is not installed"):
        PB.fetch(tmp_path / "basic.js")
    assert PB.main(["--dest", str(tmp_path / "basic.js")]) == 1


def test_bundle_path_env(tmp_path, monkeypatch):
    f = tmp_path / "b.js"
    f.write_bytes(FAKE_JS)
    monkeypatch.setenv(PB.ENV, str(f))
    assert PB.bundle_path() == f
    monkeypatch.setenv(PB.ENV, "off")
    assert PB.bundle_path() is None
    monkeypatch.setenv(PB.ENV, str(tmp_path / "missing.js"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        PB.bundle_path()


def test_installed_in_ci():
    """`make lab-venv` fetches it; in CI a silent fall-back to the full bundle would hide a
    broken set-up step (and the browser test would measure the slow path)."""
    if os.environ.get("CI") != "true" and PB.bundle_path() is None:
        pytest.skip("the basic bundle is not installed: run `make lab-venv` (needs npm)")
    p = PB.bundle_path()
    assert p is not None and p.stat().st_size > 500_000
    assert f"v{PB.plotly_js_version()}" in p.read_text(encoding="utf-8")[:400]


def test_views_send_the_basic_bundle_when_installed(tmp_path, monkeypatch):
    f = tmp_path / "b.js"
    f.write_bytes(FAKE_JS)
    monkeypatch.delenv("TRICKLES_PLOTLY_JS", raising=False)
    monkeypatch.setenv(PB.ENV, str(f))
    stream._plotly_source.cache_clear()
    try:
        assert stream.plotly_js_mode() == "send"
        assert stream._plotly_source().startswith(FAKE_JS.decode())
        monkeypatch.setenv(PB.ENV, "off")
        stream._plotly_source.cache_clear()
        assert "export default" in stream._plotly_source()
        assert len(stream._plotly_source()) > 3_000_000  # the full plotly.js
    finally:
        stream._plotly_source.cache_clear()


def test_show_draws_basic_figures_with_the_page_plotly(tmp_path, monkeypatch):
    f = tmp_path / "b.js"
    f.write_bytes(FAKE_JS)
    monkeypatch.delenv("TRICKLES_PLOTLY_JS", raising=False)
    monkeypatch.setenv(PB.ENV, str(f))
    shown: list = []
    scatter = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]), layout={"title": "cwnd"})
    table = go.Figure(go.Table(cells={"values": [[1]]}))
    with mock.patch.object(stream.PlotlyRuntime, "ensure") as ensure, \
            mock.patch("IPython.display.display", lambda obj, **kw: shown.append(obj)), \
            mock.patch.object(go.Figure, "show", lambda self: shown.append("fig.show")):
        stream.show(scatter)
        stream.show(table)
    assert ensure.called
    assert isinstance(shown[0], dict) and set(shown[0]) == {"text/html", "text/plain"}
    assert '"x":[1,2]' in shown[0]["text/html"] and "cwnd" in shown[0]["text/plain"]
    assert shown[1] == "fig.show"  # a table needs the full plotly.js


def test_marker_key_names_every_kind_without_plotly():
    key = F.marker_key_html()
    for kind in ("initial", "continue", "split", "terminate", "retransmit", "bootstrap",
                 "timeout"):
        assert f" {kind}</span>" in key
        assert F.KIND_STYLE[kind][0] in key
    assert "plotly" not in key.lower()
