// Injected into every page the notebook harness opens (trickles_kit/testing/browser.py).
//
// 1. A 50 ms heartbeat: the longest gap beyond 50 ms is the longest main-thread stall.
// 2. What the page receives on kernel websockets, timed by the page itself (a stalled page
//    sees messages late, as the student does): bytes, frames, and the execute_input / status /
//    error messages (JupyterLab's v1 binary protocol or the older JSON one).
(() => { const w = window; w.__tkStall = {max: 0, last: performance.now(),
    ticks: 0, long: []}; setInterval(() => { const now = performance.now();
    const gap = now - w.__tkStall.last - 50;
    if (gap > 150) w.__tkStall.long.push([Date.now(), Math.round(gap)]);
    w.__tkStall.max = Math.max(w.__tkStall.max, gap);
    w.__tkStall.last = now; w.__tkStall.ticks++; }, 50); })();

(() => {
  const w = window;
  w.__tkWs = {bytes: 0, frames: 0, on: false, msgs: []};
  const dec = new TextDecoder();
  const parse = (data) => {
    let header, parent, content = {}, channel;
    if (typeof data === 'string') {
      const m = JSON.parse(data); header = m.header; parent = m.parent_header;
      content = m.content; channel = m.channel;
    } else {
      const v = new DataView(data); const n = Number(v.getBigUint64(0, true));
      const off = []; for (let i = 0; i < n; i++) off.push(Number(v.getBigUint64(8 + 8 * i, true)));
      const part = (i) => dec.decode(new Uint8Array(data, off[i], (i + 1 < n ? off[i + 1] : data.byteLength) - off[i]));
      channel = part(0); header = JSON.parse(part(1)); parent = JSON.parse(part(2));
      if (['execute_input', 'status', 'error'].includes(header.msg_type)) content = JSON.parse(part(4));
    }
    return {channel, type: header.msg_type, parent: (parent || {}).msg_id,
            state: content.execution_state, code: content.code, ename: content.ename};
  };
  const Orig = w.WebSocket;
  w.WebSocket = function (url, protocols) {
    const ws = protocols === undefined ? new Orig(url) : new Orig(url, protocols);
    if (String(url).includes('/api/kernels/')) {
      ws.addEventListener('message', (ev) => {
        const r = w.__tkWs; if (!r.on) return;
        const d = ev.data; r.frames++;
        r.bytes += typeof d === 'string' ? new Blob([d]).size : d.byteLength;
        try {
          const m = parse(d);
          if (['execute_input', 'status', 'error'].includes(m.type)) { m.wall = Date.now(); r.msgs.push(m); }
        } catch (e) { /* not a kernel message */ }
      });
    }
    return ws;
  };
  w.WebSocket.prototype = Orig.prototype;
  Object.assign(w.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
})();
