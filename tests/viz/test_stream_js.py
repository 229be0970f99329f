"""stream.js itself, run by node: the page side of the live view without a browser.

A real dashboard's messages (recorded in Python) are replayed into the module's store through
the same `msg:custom` handler JupyterLab calls; the store must pass the final digest check, and
fail it when one message is lost. The decimation helpers keep what a live frame must show.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from wire_helpers import need_tool

pytest.importorskip("anywidget", reason="the live view is an anywidget: make lab-venv")

from trickles_kit.apps.sim import simulate_transfer  # noqa: E402
from trickles_kit.core.events import EventLog  # noqa: E402
from trickles_kit.viz import live as L  # noqa: E402

JS = Path(L.__file__).with_name("stream.js")

HARNESS = r"""
import { readFileSync } from "node:fs";
const mod = await import(process.argv[2]);
const rec = JSON.parse(readFileSync(process.argv[3], "utf8"));
const handlers = {};
const state = { spec: rec.spec, uid: rec.uid, view_kind: "dashboard" };
const model = { get: (k) => state[k], on: (ev, fn) => { handlers[ev] = fn; } };
mod.default.initialize({ model });
for (const [content, bufs] of rec.messages) {
  const views = bufs.map((b) => {
    const raw = Buffer.from(b, "base64");
    const padded = Buffer.alloc(raw.length + 3);  // an odd offset, as a websocket frame gives
    raw.copy(padded, 3);
    return new DataView(padded.buffer, padded.byteOffset + 3, raw.length);
  });
  handlers["msg:custom"](content, views);
}
const { strided, envelope, segments } = mod.internals;
const y = Array.from({ length: 100000 },
                     (_, k) => Math.sin(k / 500) * 50 + (k === 77777 ? 999 : 0));
const env = envelope(y, 4000);
const seg = Array.from({ length: 3000 }, (_, k) => (k % 3 === 2 ? null : k));
const st = strided(10001, 1500);
console.log(JSON.stringify({
  view: globalThis.__tricklesLive.views[rec.uid],
  envelope: { n: env.length, first: env[0], last: env[env.length - 1], peak: env.includes(77777) },
  segments: segments(seg, 300).map((k) => seg[k]),
  strided: { n: st.length, first: st[0], last: st[st.length - 1] },
}));
"""


def _node() -> str:
    return need_tool("node", "apt-get install nodejs (or make sysdeps as root)")


def _run(tmp_path: Path, drop: int | None = None) -> dict:
    log = EventLog()
    simulate_transfer(1_000_000, 0.02, 4, on_event=log)
    dash = L.LiveDashboard(plotly_js="page")
    dash.view.record = True
    for i in range(0, len(log.events), 400):  # several updates, as a live run sends them
        dash.draw(log.events[i:i + 400])
    dash.finish()
    msgs = [(c, [base64.b64encode(b).decode() for b in bufs]) for c, bufs in dash.view.sent]
    if drop is not None:
        data = [i for i, (c, _) in enumerate(msgs) if c["op"] == "data"]
        del msgs[data[drop]]
    (tmp_path / "stream.mjs").write_text(JS.read_text())
    (tmp_path / "harness.mjs").write_text(HARNESS)
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps({"spec": dash.view.spec, "uid": dash.view.uid,
                               "messages": msgs}))
    out = subprocess.run([_node(), str(tmp_path / "harness.mjs"),
                          (tmp_path / "stream.mjs").as_uri(), str(rec)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_page_store_passes_the_final_check(tmp_path: Path) -> None:
    r = _run(tmp_path)
    assert r["view"]["match"] is True, r["view"]["problems"]
    assert r["view"]["events"] > 1000
    # decimation: a line keeps its ends and its extremes; segments stay whole; strides end last
    env = r["envelope"]
    assert env["n"] <= 4100 and env["first"] == 0 and env["last"] == 99999 and env["peak"]
    segs = r["segments"]
    assert len(segs) % 3 == 0 and all(segs[k + 2] is None for k in range(0, len(segs), 3))
    st = r["strided"]
    assert st["first"] == 0 and st["last"] == 10000 and 1000 < st["n"] <= 1501


def test_a_lost_message_fails_the_final_check(tmp_path: Path) -> None:
    r = _run(tmp_path, drop=1)
    assert r["view"]["match"] is False
    assert r["view"]["problems"]
