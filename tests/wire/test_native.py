"""The compiled checksum (native/speedups.c) equals the pure-Python one, and the one switch
(trickles_kit.native) picks the build: TRICKLES_PURE=1 keeps every compiled module out.

The compiled twin is loaded directly, whichever build the suite runs under. Without it (no C
compiler when the package was installed) these comparisons skip outside CI; in CI, where
`make native` builds it, they fail instead.
"""

from __future__ import annotations

import importlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wire_helpers import IN_CI, REPO

from trickles_kit import native
from trickles_kit.wire import segment as sg


def compiled():
    try:
        return importlib.import_module("trickles_kit.native._speedups")
    except ImportError:
        msg = "the compiled build is not there: make native (needs a C compiler)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


LENGTHS = [*range(0, 80), 255, 256, 257, 1447, 1448, 1475, 1476, 1477, 9000, 65535]


def test_ones_sum_is_the_integer_mod_65535_both_ways() -> None:
    c = compiled()
    rng = random.Random(17)
    for n in LENGTHS:
        for _ in range(8):
            d = rng.randbytes(n)
            want = int.from_bytes(d, "big") % 0xFFFF
            assert sg.py_ones_sum(d) == want, n
            assert c.ones_sum(d) == want, n
            assert c.ones_sum(bytearray(d)) == c.ones_sum(memoryview(d)) == want


def test_checksum_compiled_equals_pure_on_random_inputs() -> None:
    c = compiled()
    rng = random.Random(18)
    for n in LENGTHS:
        for _ in range(8):
            src, dst, seg = rng.randbytes(4), rng.randbytes(4), rng.randbytes(n)
            assert c.checksum(src, dst, seg) == sg.py_checksum(src, dst, seg), n


def test_checksum_edge_words() -> None:
    """All-ones and all-zero data: where ones' complement has two zeros (0 and 0xFFFF)."""
    c = compiled()
    for n in (0, 1, 2, 3, 64, 1476, 1477):
        for fill in (0, 0xFF):
            for ip in (bytes(4), b"\xff" * 4):
                seg = bytes([fill]) * n
                assert c.checksum(ip, ip, seg) == sg.py_checksum(ip, ip, seg), (n, fill, ip)


def test_a_checksummed_segment_verifies_with_either_checksum() -> None:
    c = compiled()
    src, dst = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
    seg = sg.encode_segment(src, dst, 80, 4000, 1, 2, sg.ACK, b"x" * 1001, 7)
    zeroed = seg[:16] + b"\0\0" + seg[18:]
    want = int.from_bytes(seg[16:18], "big")
    assert c.checksum(src, dst, zeroed) == sg.py_checksum(src, dst, zeroed) == want
    assert sg.decode_segment(seg, src, dst).trickles_len == 7


def test_bad_addresses_are_refused() -> None:
    c = compiled()
    with pytest.raises(ValueError):
        c.checksum(b"\0" * 3, b"\0" * 4, b"")


def test_the_switch_names_the_active_checksum() -> None:
    assert (sg.checksum is sg.py_checksum) == (native.speedups is None)
    assert native.build().startswith("pure Python" if native.speedups is None else "compiled")


def _run(code: str, pure: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRICKLES_PURE"}
    if pure:
        env["TRICKLES_PURE"] = "1"
    env["PYTHONPATH"] = str(REPO)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_trickles_pure_loads_every_module_from_source() -> None:
    code = ("import trickles_kit.wire.segment as s, trickles_kit.core.cc as c, "
            "trickles_kit.native as n; print(s.__file__.endswith('.py'), "
            "c.__file__.endswith('.py'), n.speedups is None, n.mypyc_modules(), n.build())")
    assert _run(code, pure=True) == "True True True [] pure Python (TRICKLES_PURE=1)"


def test_without_trickles_pure_the_compiled_build_is_active() -> None:
    compiled()
    code = "import trickles_kit.wire.segment as s, trickles_kit.native as n; print(n.build())"
    assert _run(code, pure=False).startswith("compiled (checksum and batched I/O in C; mypyc: ")


def _copy_with_build(tmp_path: Path) -> tuple[Path, str]:
    """trickles_kit copied with its compiled files (times kept), and one compiled module's name;
    skips (fails in CI) without a mypyc build."""
    if not native.compiled_on_disk():
        msg = "no mypyc build here: make native (needs a C compiler and mypy)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    shutil.copytree(REPO / "trickles_kit", tmp_path / "trickles_kit",
                    ignore=shutil.ignore_patterns("__pycache__"))  # copy2: times kept
    return tmp_path / "trickles_kit", native.compiled_on_disk()[0]


def _import_in_copy(tmp_path: Path, name: str, show: str) -> str:
    """Import `name` from the copy under tmp_path (compiled build allowed); print whether it came
    from its .py, the mypyc modules loaded, and `show` (an expression over `n`, the native
    module)."""
    code = ("import importlib, trickles_kit.native as n; m = importlib.import_module("
            f"{name!r}); print(m.__file__.endswith('.py'), n.mypyc_modules(), {show})")
    env = {k: v for k, v in os.environ.items() if k != "TRICKLES_PURE"}
    env["PYTHONPATH"] = str(tmp_path)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_an_edited_module_is_never_run_from_a_stale_mypyc_build(tmp_path: Path) -> None:
    """Edit a compiled module's .py after `make native`: every module comes from its .py (the
    mypyc modules call each other directly, so none of them is kept), and doctor says why."""
    pkg, name = _copy_with_build(tmp_path)
    py = pkg.parent / (name.replace(".", "/") + ".py")
    py.write_text(py.read_text() + "\n")  # an edit: newer than its .so
    out = _import_in_copy(tmp_path, name, "n.build()")
    assert out.startswith("True [] compiled (checksum and batched I/O in C; mypyc: none, ")
    assert "changed or unlisted since `make native`" in out


def test_a_compiled_module_no_longer_listed_is_never_loaded(tmp_path: Path) -> None:
    """A pull that drops a module from mypyc_modules.txt leaves its .so behind until the next
    `make native`; loading it would ask the rebuilt group for an init it lacks (ImportError at
    the first import). Every module then comes from its .py, and doctor says why."""
    pkg, name = _copy_with_build(tmp_path)
    listing = pkg / "native" / "mypyc_modules.txt"
    rel = name.replace(".", "/") + ".py"
    lines = listing.read_text().splitlines()
    assert rel in lines
    listing.write_text("\n".join(ln for ln in lines if ln != rel) + "\n")
    assert _import_in_copy(tmp_path, name, "n.STALE") == f"True [] {[rel]!r}"
