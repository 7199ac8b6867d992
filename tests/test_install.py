"""The README's install section works as written (issue 12).

The CI snippet's `run:` steps are read from README.md between its ci-snippet markers, so the
README and this test cannot drift apart, and run one by one in a copy of the repository with a
fresh virtual environment on PATH: as a CI job runs them on a fresh checkout. Dependencies come
from the index pip is configured with (or its cache), as they would in CI.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

import bce_audit
import bce_audit.compiled

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- ci-snippet: begin", "<!-- ci-snippet: end -->"
NOT_COPIED = (".venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".mypy_cache", ".ruff_cache",
              ".hypothesis", "build", "dist")


def ci_steps(readme: str) -> list[str]:
    """The `run:` commands of the README's CI snippet, in order; each must be one line.

    >>> ci_steps("<!-- ci-snippet: begin -->\\n```yaml\\n      - uses: x\\n      - run: a b\\n"
    ...          "```\\n<!-- ci-snippet: end -->")
    ['a b']
    """
    start = readme.index(BEGIN)
    block = readme[start:readme.index(END, start)]
    steps = re.findall(r"^\s*- run:\s*(.*)$", block, flags=re.M)
    assert steps and all(s and s[0] not in "|>" for s in steps), steps  # one-line commands only
    return steps


def _copy(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*NOT_COPIED))
    return dest


def _env(venv: Path, tmp: Path) -> dict[str, str]:
    """The environment of a CI step: the venv first on PATH, nothing of this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               XDG_CACHE_HOME=str(tmp / "xdg-cache"), COLUMNS="100", NO_COLOR="1")
    return env


def _sh(command: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    """Run one step as GitHub Actions does (bash -e); fail with its output if it fails."""
    r = subprocess.run(["bash", "-e", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{command!r} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_the_snippet_is_a_wheel_job():
    steps = ci_steps((ROOT / "README.md").read_text(encoding="utf-8"))
    assert any("build" in s and "--wheel" in s for s in steps)
    assert any(re.search(r"pip install dist/\S*\.whl", s) for s in steps)  # the wheel, not the checkout
    assert "bce-audit --version" in steps
    assert not any(re.search(r"pip install\s+(-e\s+)?\.", s) for s in steps)


PYPI = "https://pypi.org/simple/"


def _pip_sources() -> list[str]:
    """Where pip fetches from, as configured (environment, then its config files): the index,
    the extra indexes and the find-links; PyPI where no index is set."""
    r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                       timeout=60)
    config: dict[str, list[str]] = {}
    for line in r.stdout.splitlines():  # global.index-url='https://...'
        key, _, value = line.partition("=")
        config.setdefault(key.rpartition(".")[2], []).extend(value.strip("'\"").split())
    for key in ("index-url", "extra-index-url", "find-links"):
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            config[key] = env.split() + config.get(key, [])
    index = config.get("index-url", [PYPI])[:1]
    return list(dict.fromkeys(index + config.get("extra-index-url", []) + config.get("find-links", [])))


def _reachable(source: str) -> bool:
    """A local directory that exists, or a URL that answers within a few seconds."""
    if "://" not in source or source.startswith("file://"):
        return Path(source.removeprefix("file://")).exists()
    try:
        with urllib.request.urlopen(source, timeout=10):
            return True
    except (OSError, ValueError):  # URLError, a timeout, a refused connection; a malformed URL
        return False


@pytest.mark.slow
def test_issue_12_the_readme_ci_snippet_runs(tmp_path):
    """A venv, a wheel built in isolation, the core dependencies, a sweep, a gate: 15 s to a minute.
    It needs a package index (the build fetches setuptools): where none of pip's sources can be
    reached it is skipped, saying which were tried; it runs wherever PyPI answers."""
    sources = _pip_sources()
    if not any(_reachable(src) for src in sources):
        pytest.skip(f"no package index reachable (pip's sources: {', '.join(sources)}): the CI "
                    "snippet's build and installs need one")
    steps = ci_steps((ROOT / "README.md").read_text(encoding="utf-8"))
    repo = _copy(tmp_path / "bce-audit")
    venv = tmp_path / "venv"  # outside the copy: the job's interpreter, not part of the checkout
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    env = _env(venv, tmp_path)
    outputs = {step: _sh(step, repo, env) for step in steps}

    # the wheel holds the compiled kernels where this machine compiles them (as it does this checkout)
    built = "yes" if bce_audit.compiled.active() else "no"
    version = f"bce-audit {bce_audit.__version__} (compiled: {built})"
    assert outputs["bce-audit --version"].strip() == version
    wheels = [w.name for w in (repo / "dist").glob("*.whl")]
    assert len(wheels) == 1 and wheels[0].startswith(f"bce_audit-{bce_audit.__version__}-"), wheels
    # the installed wheel ran, not the copied sources: import it from elsewhere
    where = _sh("python -c 'import bce_audit; print(bce_audit.__file__)'", tmp_path, env).strip()
    assert Path(where).is_relative_to(venv), where
    sweep = json.loads((repo / "sweep.json").read_text(encoding="utf-8"))
    assert any(k["name"] == "roundtrip_overflow" and k["dtype"] == "float16" for k in sweep["keypoints"])
    assert 'failures="0"' in (repo / "gate.xml").read_text(encoding="utf-8")


def offline_command(readme: str) -> list[str]:
    """The README's command for where nothing can be fetched, as its words.

    >>> offline_command("Where nothing can be fetched, `pip wheel . -w dist` writes")
    ['pip', 'wheel', '.', '-w', 'dist']
    """
    m = re.search(r"Where nothing can be fetched,\s+`([^`]+)`", readme)
    assert m, "the README's offline fallback is missing"
    return shlex.split(m.group(1))


def test_offline_wheel_without_build(tmp_path):
    """The README's fallback where nothing can be fetched, run exactly as the README writes it,
    with this interpreter's pip (``python -m pip``: the `pip` on a venv's PATH) and one flag
    that changes nothing it builds: ``--disable-pip-version-check`` (pip would otherwise ask
    PyPI for a newer pip, a network call the fallback must not need)."""
    cmd = offline_command((ROOT / "README.md").read_text(encoding="utf-8"))
    assert cmd[:2] == ["pip", "wheel"] and "--no-build-isolation" in cmd and "--no-deps" in cmd
    repo = _copy(tmp_path / "bce-audit")
    out = subprocess.run([sys.executable, "-m", *cmd, "--disable-pip-version-check"], cwd=repo,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = (repo / cmd[cmd.index("-w") + 1]).glob("*.whl")
    assert wheel.name.startswith(f"bce_audit-{bce_audit.__version__}-")
    # where this checkout's kernels are compiled, the wheel's are too (the same compiler)
    with zipfile.ZipFile(wheel) as z:
        assert any(n.startswith("bce_audit/_kernels.") for n in z.namelist()) == bce_audit.compiled.active()
