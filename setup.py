"""The optional compiled build (pyproject.toml holds everything else).

`pip install -e .` (what `make venv` / `make lab-venv` run) also builds
trickles_kit/native/speedups.c when a C compiler and Python's headers are present; without
them the build step is skipped (`optional=True`) and the package stays pure Python.
`make native` rebuilds it in place, and with mypy installed also compiles the hot modules
listed in trickles_kit/native/mypyc_modules.txt with mypyc (TRICKLES_MYPYC=1).
"""

import os

from setuptools import Extension, setup

ext = [Extension("trickles_kit.native._speedups", ["trickles_kit/native/speedups.c"],
                 optional=True, extra_compile_args=["-O2"])]

if os.environ.get("TRICKLES_MYPYC") == "1":
    from mypyc.build import mypycify

    with open("trickles_kit/native/mypyc_modules.txt", encoding="utf-8") as f:
        mods = [ln.split("#")[0].strip() for ln in f]
    # the group's shared library inside the package (trickles_kit/native/), so that a copy of
    # trickles_kit/ carries it along
    # type errors in modules they import (not compiled) do not stop the build
    ext += mypycify([m for m in mods if m] + ["--follow-imports=silent"], opt_level="3",
                    group_name="trickles_kit.native.mypyc_group")

setup(ext_modules=ext)
