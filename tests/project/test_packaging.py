"""Packaging consistency: pyproject.toml, environment.yml, README and .ci/run agree."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _normalize(requirement: str) -> str:
    """Bare distribution name: lowercase, '_' -> '-', specifiers/extras/markers stripped."""
    name = re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]
    return name.lower().replace("_", "-")


def _load_pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def _environment_dependencies(text: str) -> list[str]:
    """Items of the top-level `dependencies:` list of a simple conda environment.yml.

    Handles comments and plain `- item` entries; nested mappings such as `- pip:` and
    their sub-lists are skipped.
    """
    items: list[str] = []
    in_deps = False
    list_indent: int | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if indent == 0:
            in_deps = stripped == "dependencies:"
            list_indent = None
            continue
        if not in_deps or not stripped.startswith("- "):
            continue
        if list_indent is None:
            list_indent = indent
        if indent != list_indent:
            continue  # entries of a nested list (e.g. under `- pip:`)
        item = stripped[2:].strip().strip("'\"")
        if item.endswith(":"):
            continue  # nested mapping such as `- pip:`
        items.append(item)
    return items


def _shell_commands(text: str) -> list[str]:
    commands = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            commands.append(line)
    return commands


def test_environment_yml_matches_pyproject():
    project = _load_pyproject()["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    pyproject_names = {_normalize(r) for r in requirements}

    env_text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    env_names = {_normalize(item) for item in _environment_dependencies(env_text)}

    assert {"python", "pip"} <= env_names
    # not Python packages: nodejs brings npm, which postBuild uses for plotly.js's basic bundle
    assert "nodejs" in env_names
    assert env_names - {"python", "pip", "nodejs"} == pyproject_names


def test_ci_run_matches_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", readme, flags=re.MULTILINE | re.DOTALL)
    readme_commands = [c for block in blocks for c in _shell_commands(block)]
    test_commands = [c for c in readme_commands if c.split()[:2] == ["make", "test"]]
    assert len(test_commands) == 1, f"expected one `make test` line in README, got {test_commands}"

    ci_run = ROOT / ".ci" / "run"
    assert ci_run.stat().st_mode & 0o111, ".ci/run must be executable"
    ci_commands = [c.removeprefix("exec ").strip() for c in _shell_commands(ci_run.read_text())]
    assert test_commands[0] in ci_commands


def test_console_script_entry_point():
    scripts = _load_pyproject()["project"]["scripts"]
    assert scripts["trickles"] == "trickles_kit.cli:main"
