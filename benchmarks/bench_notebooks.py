#!/usr/bin/env python3
"""The live views as students meet them: JupyterLab + Debian chromium, Run All, measured.

For notebooks/01-tour.ipynb with its own defaults, each run in a fresh kernel and a fresh page:

* `ws_bytes`: bytes the page received on the kernel websocket from Run All to the last cell;
* `first_frame_s`: the transfer cell starts (its execute_input reaches the page) → the first
  dashboard frame with data;
* `frames_during_transfer`: dashboard redraws (rounds over its panels) whose data lie inside the
  transfer, drawn between its first and last packet (event clock + the run's wall offset);
* `final_matches_log`: the page's own check of every streamed point against the digest of the
  static builders' figures;
* `tab_stall_ms`: the longest gap of a 50 ms heartbeat in the page (its main thread blocked);
* `blank_panels`: plots on the page that ended with no data.

Then 01 with SIZE = 20 MB (`lag_s`: last packet → the first frame that shows it;
`cell_done_after_transfer_s`: last packet → the transfer cell done) and 05 (the replay) for
blank panels. `plotly_startup_ms`: plotly.js's own start-up in a blank page of the same browser,
for the full bundle and the basic one the views send when it is installed (`views_use`): the
floor under `tab_stall_ms`, paid once per page.

It measures and records; it never asserts. From the repository root:

    .venv/bin/python benchmarks/bench_notebooks.py            # 20 + 20 runs, 3 big: ~10 min
    .venv/bin/python benchmarks/bench_notebooks.py --quick    # 1 + 1 runs, no big run: a smoke run
    .venv/bin/python benchmarks/bench_notebooks.py --record   # → benchmarks/results/

The result goes to reports/benchmarks/notebooks_live.json (or --out); --record writes the committed
benchmarks/results/notebooks_live.json instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trickles_kit.bench.meta import close_meta, meta  # noqa: E402
from trickles_kit.testing import browser as B  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
TARGETS = {"ws_bytes": ("<=", 6_000_000), "first_frame_s": ("<=", 2.0),
           "frames_during_transfer": (">=", 5), "tab_stall_ms": ("<=", 1000),
           "lag_s": ("<=", 1.0), "cell_done_after_transfer_s": ("<=", 2.0),
           "blank_panels": ("==", 0)}


def _summary(values: list[Any], worse: str) -> dict[str, Any]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "worst": None, "runs": values}
    worst = min(vals) if worse == "low" else max(vals)
    return {"median": statistics.median(vals), "worst": worst, "runs": values}


def _met(name: str, summary: dict[str, Any]) -> bool | None:
    op, target = TARGETS[name]
    w = summary["worst"]
    if w is None:
        return None
    return {"<=": w <= target, ">=": w >= target, "==": w == target}[op]


def plotly_startup_ms(browser: Any, src_path: Path, repeat: int = 3) -> list[float]:
    """A plotly.js bundle parsed and run in a blank page: what any plotly figure costs once."""
    src = src_path.read_text()
    out = []
    for _ in range(repeat):
        page = browser.new_page()
        page.set_content("<div></div>")
        out.append(round(page.evaluate(
            """(src) => { const t0 = performance.now(); const s = document.createElement('script');
               s.textContent = src; document.head.appendChild(s);
               return performance.now() - t0; }""", src), 1))
        page.close()
    return out


def one_run(lab: B.Lab, browser: Any, work: Path, src: str, tag: str,
            params: dict | None, view_kind: str) -> dict[str, Any]:
    """One notebook copy (a new path: a new kernel), Run All in a new page."""
    name = f"{Path(src).stem}-{tag}.ipynb"
    n = B.copy_notebook(NOTEBOOKS / src, work / name, params)
    t0 = time.monotonic()
    run = B.run_notebook(browser, lab, name, n, timeout_s=900)
    lab.shutdown_kernels()
    m = B.live_metrics(run, view_kind=view_kind)
    return {"notebook": src, "params": params or {}, "wall_s": round(time.monotonic() - t0, 1),
            "ws_bytes": run.ws_bytes, "tab_stall_ms": round(run.stall_ms, 1),
            "blank_panels": len(B.blank_panels(run)), "error_outputs": run.error_outputs,
            "page_errors": run.errors[:3], **{k: v for k, v in m.items() if k != "found"},
            "view_found": m.get("found", False),
            # where the time went (ms after Run All): stalls over 150 ms, and each cell's span
            "stalls_ms": [[round(w - run.clicked_at), g] for w, g in run.stalls],
            "cells_ms": [[c["code"][:40], round(c["start"] - run.clicked_at),
                          None if c["end"] is None else round(c["end"] - run.clicked_at)]
                         for c in run.cells]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="Run All runs of 01 and of 05")
    ap.add_argument("--big-runs", type=int, default=3, help="runs of 01 with --big-size")
    ap.add_argument("--big-size", type=int, default=20_000_000, help="bytes (default 20 MB)")
    ap.add_argument("--quick", action="store_true",
                    help="one run of 01 and one of 05, no big run, plotly.js start-up once: "
                         "a smoke run (~1 min)")
    ap.add_argument("--out", type=Path,
                    default=ROOT / "reports" / "benchmarks" / "notebooks_live.json")
    ap.add_argument("--record", action="store_true",
                    help="write benchmarks/results/notebooks_live.json (the committed result)")
    ap.add_argument("--note", help="a note stored with the result")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.big_runs = 1, 0
    out = ROOT / "benchmarks" / "results" / "notebooks_live.json" if args.record else args.out
    from playwright.sync_api import sync_playwright

    t_start = time.perf_counter()
    res: dict[str, Any] = {"meta": meta(sys.argv[1:] if argv is None else argv,
                                        "quick" if args.quick else "full")}
    res["meta"]["command"] = ("python benchmarks/bench_notebooks.py "
                              + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    tour, replay, big = [], [], []
    with tempfile.TemporaryDirectory(prefix="tk-bench-nb-") as tmp:
        work = Path(tmp) / "nb"
        work.mkdir()
        with B.Lab(Path(tmp) / "jhome", work) as lab, sync_playwright() as p:
            browser = B.launch(p, Path(tmp) / "jhome")
            try:
                import plotly

                from trickles_kit.viz.plotly_bundle import bundle_path
                full = Path(plotly.__file__).with_name("package_data") / "plotly.min.js"
                basic = bundle_path()
                reps = 1 if args.quick else 3
                startup = {"full": plotly_startup_ms(browser, full, reps),
                           "basic": plotly_startup_ms(browser, basic, reps) if basic else None,
                           "views_use": "basic" if basic else "full"}
                total = 2 * args.runs + args.big_runs
                done = 0
                for i in range(args.runs):
                    for src, kind, acc in (("01-tour.ipynb", "dashboard", tour),
                                           ("05-replaying-captures.ipynb", "replay", replay)):
                        acc.append(one_run(lab, browser, work, src, f"r{i}", None, kind))
                        done += 1
                        r = acc[-1]
                        print(f"[{done}/{total}] {src}: ws {r['ws_bytes'] / 1e6:.2f} MB, "
                              f"stall {r['tab_stall_ms']:.0f} ms, frames during "
                              f"{r.get('frames_during_transfer')}, final ok "
                              f"{r.get('final_matches_log')}, blank {r['blank_panels']}",
                              flush=True)
                for i in range(args.big_runs):
                    big.append(one_run(lab, browser, work, "01-tour.ipynb", f"big{i}",
                                       {"SIZE": args.big_size}, "dashboard"))
                    done += 1
                    r = big[-1]
                    print(f"[{done}/{total}] 01 with {args.big_size / 1e6:.0f} MB: lag "
                          f"{r.get('lag_s')} s, cell done {r.get('cell_done_after_transfer_s')}"
                          f" s after the last packet", flush=True)
            finally:
                browser.close()
    summ = {
        "ws_bytes": _summary([r["ws_bytes"] for r in tour], "high"),
        "first_frame_s": _summary([r.get("first_frame_s") for r in tour], "high"),
        "frames_during_transfer": _summary([r.get("frames_during_transfer") for r in tour],
                                           "low"),
        "tab_stall_ms": _summary([r["tab_stall_ms"] for r in tour], "high"),
        "lag_s": _summary([r.get("lag_s") for r in big], "high"),
        "cell_done_after_transfer_s": _summary(
            [r.get("cell_done_after_transfer_s") for r in big], "high"),
        "blank_panels": _summary([r["blank_panels"] for r in tour + replay], "high"),
    }
    res["summary"] = {k: {"median": v["median"], "worst": v["worst"],
                          "target": " ".join(map(str, TARGETS[k])), "met": _met(k, v)}
                      for k, v in summ.items()}
    res["summary"]["final_matches_log"] = {
        "all": all(r.get("final_matches_log") for r in tour + replay + big),
        "runs": len(tour + replay + big)}
    res["summary"]["error_outputs"] = sum(r["error_outputs"] for r in tour + replay + big)
    res["plotly_startup_ms"] = startup
    res["runs"] = {"tour": tour, "replay": replay, "big": big}
    res["method"] = __doc__.split("\n\n", 2)[1]
    close_meta(res, "quick" if args.quick else "full", t_start, args.note)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    for k, v in res["summary"].items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
