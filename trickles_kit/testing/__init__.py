"""Testing helpers: a packetdrill-style scenario runner for the server engine.

`from trickles_kit.testing import run_file, run_scenario` works; the names are loaded lazily so
that `python -m trickles_kit.testing.scenario` does not import the module twice.
"""

from __future__ import annotations

__all__ = ["Check", "ScenarioError", "ScenarioResult", "parse_scenario", "run_file",
           "run_scenario", "scenario_paths"]


def __getattr__(name: str):
    if name in __all__:
        from trickles_kit.testing import scenario  # lazy: `-m ...testing.scenario` imports once

        return getattr(scenario, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
