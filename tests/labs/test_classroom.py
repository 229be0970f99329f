"""The classroom path: every notebook runs to the end (Run All) as an unprivileged user.

Students on a JupyterHub are not root. Run as root, these tests start each notebook's kernel as
uid 65534 (``setpriv``) with nbclient; run as an ordinary user, the kernel simply runs as that
user. Either way every cell must run, the self-checks must print verdicts, and the notebooks with
a root-only part must show a banner saying what needs root and what was used instead.

The kernel's interpreter must be one that uid 65534 can execute, and the venv's own may live under
a home only root can enter. The tests therefore build a tiny venv from a system Python of the
same minor version that reuses the project venv's packages through a ``.pth`` file; when uid 65534
cannot read the checkout either, the venv gets a copy of the toolkit and its kernel dependencies
from PyPI instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
NOBODY = 65534
# setpriv keeps root's capabilities until its own execve, so that exec could still reach
# root-only paths: it starts a shell, which execs the real command as a plain uid 65534.
SETPRIV = ("setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", "--",
           "/bin/sh", "-c", 'exec "$0" "$@"')
KERNEL = "tk-unprivileged"
CELL_TIMEOUT = 300  # s per cell: a ceiling for a hung kernel, not a speed target
# What a lab kernel imports: the toolkit's lab extra less JupyterLab and the browser.
KERNEL_DEPS = ("cryptography>=42", "ipykernel", "ipywidgets", "plotly", "anywidget", "pandas",
               "scapy", "nbformat")
PROBE = "import trickles_kit, ipykernel, plotly, pandas, anywidget, cryptography"

# Without root, the notebooks with a root-only part must say so (text in the executed outputs:
# what needs root, and what was used instead). The others need nothing and say so up front.
BANNERS: dict[str, tuple[str, ...]] = {
    "00": ("Needs root: raw IP sockets", "Used instead: UDP on 127.0.0.1"),
    "01": ("Fallback transport: udp", "instead of raw IP", "run Jupyter as root"),
    "06": ("Needs root: the small memory run", "Used instead: the committed full results"),
    "07": ("Committed result, not a live run", "need root"),
}
NO_ROOT = ("02", "03", "04", "05", "08", "09")


def _ci() -> bool:
    return os.environ.get("CI") == "true"


def _small_params() -> dict[str, dict[str, object]]:
    """The small parameters of the headless notebook tests (one table for both suites)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_notebooks import PARAMS

    return PARAMS


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SETPRIV, *cmd], capture_output=True, text=True, timeout=120)


def _nobody_python() -> str | None:
    """A Python of this minor version that uid 65534 can execute."""
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    seen: set[str] = set()
    for cand in (os.path.realpath(sys.executable), getattr(sys, "_base_executable", ""),
                 f"/usr/bin/python{want}", f"/usr/local/bin/python{want}"):
        if cand and cand not in seen and os.path.exists(cand):
            seen.add(cand)
            r = _as_nobody(cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
            if r.returncode == 0 and r.stdout.strip() == want:
                return cand
    return None


def _chown(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, NOBODY, NOBODY)
    return path


def _nobody_venv(base: Path) -> Path:
    """A venv whose interpreter and packages uid 65534 can read (see the module docstring)."""
    py = _nobody_python()
    if py is None:
        pytest.fail(f"no python{sys.version_info.major}.{sys.version_info.minor} that uid "
                    f"{NOBODY} can execute: apt-get install python3 (Debian's is in /usr/bin)")
    venv = base / "venv"
    subprocess.run([py, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = str(venv / "bin" / "python")
    site = Path(subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], check=True, capture_output=True,
                               text=True).stdout.strip())
    share = site / "tk_project_venv.pth"
    share.write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    if _as_nobody(vpy, "-c", PROBE).returncode == 0:
        return venv
    # uid 65534 cannot read the checkout or its venv: copy what the notebooks read, install the
    # kernel's dependencies (root installs, uid 65534 only reads)
    share.unlink()
    copy = base / "checkout"
    for part in ("trickles_kit", "captures", "benchmarks/results"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    (site / "tk_checkout.pth").write_text(f"{copy}\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", "--target", str(site), *KERNEL_DEPS],
                   check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    r = _as_nobody(vpy, "-c", PROBE)
    assert r.returncode == 0, f"uid {NOBODY} cannot import the toolkit:\n{r.stderr[-2000:]}"
    return venv


def _kernelspec(share: Path, argv: list[str], env: dict[str, str]) -> None:
    kdir = share / "kernels" / KERNEL
    kdir.mkdir(parents=True)
    spec = {"argv": argv, "env": env, "language": "python",
            "display_name": f"Python 3 (uid {NOBODY if os.geteuid() == 0 else os.geteuid()})"}
    (kdir / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def classroom() -> Iterator[Path]:
    """A directory holding the unprivileged kernel's spec (`share/`), home and temp dir; the
    kernel runs as uid 65534 when we are root, else as ourselves."""
    for m in ("nbformat", "nbclient", "ipykernel"):
        if _ci():
            __import__(m)
        else:
            pytest.importorskip(m, reason="make lab-venv")
    base = Path(tempfile.mkdtemp(prefix="tk-classroom-"))  # pytest's tmp dirs are root-only
    try:
        os.chmod(base, 0o755)
        home, tmp = base / "home", base / "tmp"
        env = {"HOME": str(home), "TMPDIR": str(tmp), "MPLBACKEND": "Agg",
               "PYTHONDONTWRITEBYTECODE": "1", "IPYTHONDIR": str(home / ".ipython"),
               "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
               "JUPYTER_DATA_DIR": str(home / ".local/share/jupyter")}
        if os.geteuid() != 0:  # already unprivileged: the student's kernel is an ordinary one
            home.mkdir()
            tmp.mkdir()
            _kernelspec(base / "share", [sys.executable, "-m", "ipykernel_launcher", "-f",
                                         "{connection_file}"], env)
            yield base
            return
        if shutil.which("setpriv") is None:
            pytest.fail("setpriv is missing: apt-get install util-linux")
        for parent in base.parents:
            if not parent.stat().st_mode & 0o001:
                pytest.fail(f"uid {NOBODY} cannot enter {parent}: set TMPDIR to a /tmp-like dir")
        venv = _nobody_venv(base)
        _chown(home)
        _chown(tmp)
        conn = _chown(base / "conn")
        env["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
        # Jupyter writes the connection file mode 0600 for root: hand uid 65534 its own copy
        setpriv = " ".join(SETPRIV[:-1]) + f" '{SETPRIV[-1]}'"
        script = (f'install -o {NOBODY} -g {NOBODY} -m 0400 "$0" "$1/kernel-$$.json" && exec '
                  f'{setpriv} "$2" -m ipykernel_launcher -f "$1/kernel-$$.json"')
        _kernelspec(base / "share", ["/bin/sh", "-c", script, "{connection_file}", str(conn),
                                     str(venv / "bin" / "python")], env)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _outputs(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.output_type == "stream":
                parts.append(o.text)
            elif o.output_type in ("display_data", "execute_result"):
                parts += [o.data.get("text/html", ""), o.data.get("text/plain", "")]
    return "\n".join(parts)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs_unprivileged(path: Path, classroom: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("JUPYTER_PATH", str(classroom / "share"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(classroom / "runtime"))
    nb = nbformat.read(path, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    small = _small_params()[path.name[:2]]
    params.source += "\n# injected by the tests\n" + "".join(f"{k} = {v!r}\n"
                                                             for k, v in small.items())
    nb.cells.append(nbformat.v4.new_code_cell("import os\nprint('euid', os.geteuid())"))
    work = classroom / f"work-{path.stem}"
    if os.geteuid() == 0:
        _chown(work)
    else:
        work.mkdir()
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL,
                            store_widget_state=False, resources={"metadata": {"path": str(work)}})
    try:
        client.execute()
    except CellExecutionError as e:  # the traceback names the cell
        pytest.fail(f"{path.name} failed without root:\n{e}")
    text = _outputs(nb)
    euid = int(text.rsplit("euid ", 1)[1].split()[0])
    assert euid == (NOBODY if os.geteuid() == 0 else os.geteuid()) and euid != 0
    assert any(line.startswith(("OK — ", "Not yet — ")) for line in text.splitlines()), \
        "the self-check cells printed a verdict"
    for needle in BANNERS.get(path.name[:2], ()):
        assert needle in text, f"{path.name}: no banner saying {needle!r}"


def test_every_notebook_says_what_needs_root() -> None:
    """Notebooks with a root-only part have a banner above; the others say up front that they
    need no privileges (the learning-goals cell)."""
    import nbformat

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        key = path.name[:2]
        assert key in BANNERS or key in NO_ROOT, f"{path.name}: say what it needs root for"
        head = nbformat.read(path, as_version=4).cells[0].source
        assert "**Privileges:**" in head, f"{path.name}: the first cell names its privileges"
        if key in NO_ROOT:
            assert "**Privileges:** none" in head, path.name


def test_repo2docker_setup_and_docs() -> None:
    """docs/classroom.md's image: postBuild runs (executable, valid bash, installs the checkout
    editable), apt.txt holds package names only, the README links the page, and the page quotes
    the banners the notebooks really show."""
    post = ROOT / "postBuild"
    assert os.access(post, os.X_OK) and post.read_text().startswith("#!/bin/bash\n")
    assert subprocess.run(["bash", "-n", str(post)]).returncode == 0
    assert "pip install --no-deps --no-cache-dir -e ." in post.read_text()
    packages = [ln.partition("#")[0].strip() for ln in (ROOT / "apt.txt").read_text().splitlines()]
    assert [p for p in packages if p] and all(re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", p)
                                              for p in packages if p)
    assert "python=3.11" in (ROOT / "environment.yml").read_text()
    assert "(docs/classroom.md)" in (ROOT / "README.md").read_text()
    page = (ROOT / "docs" / "classroom.md").read_text()
    for needles in BANNERS.values():
        assert needles[0] in page, f"docs/classroom.md does not quote {needles[0]!r}"
