"""The command's standby (`bce_audit.standby`): a child forked as `bce-audit sweep` starts, readied
while the command imports and parses, that searches the key points beside the grid.

Each test runs in a fresh interpreter: this test process may hold JAX's threads, where no fork
is made (`heap.can_fork`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CALLS = r"""
import json, os, pickle, signal, time
from bce_audit import heap, standby

def ready():
    with open(os.environ["READY_FILE"], "w") as f:
        f.write(str(os.getpid()))

def pid_of(x):
    return os.getpid(), x * 2

def fails():
    raise ValueError("no such dtype")

out = {}
assert standby.start(ready) and standby.start(ready)  # one standby; a second start keeps it
standby_pid = standby._WAITING[0]
gone = os.fork()  # a child forked later holds a copy of the request's pipe, as the grid's workers do
if gone == 0:
    time.sleep(30)
    os._exit(0)
with standby.running(pid_of, 21) as later:
    pid, value = later()
out["elsewhere"] = pid == standby_pid != os.getpid()
out["value"] = value
with open(os.environ["READY_FILE"]) as f:
    out["readied"] = int(f.read()) == standby_pid
os.kill(gone, signal.SIGKILL)
os.waitpid(gone, 0)
with standby.running(pid_of, 1) as later:  # taken: none left
    out["taken"] = later is None

standby.start(ready)
with standby.running(fails) as later:
    try:
        later()
    except ValueError as e:
        out["raised"] = str(e)
        out["cause"] = isinstance(e.__cause__, heap.ChildTraceback)

standby.start(ready)
with standby.running(lambda: 1) as later:  # a lambda does not pickle: the caller forks its own
    out["unpicklable"] = later is None
standby._dismiss()  # (the unpicklable request left it waiting)

standby.start(ready)
pid = standby._WAITING[0]
with standby.running(time.sleep, 60) as later:  # left behind: killed on leaving the block
    pass
try:
    os.kill(pid, 0)
    out["killed"] = False
except ProcessLookupError:
    out["killed"] = True

for size in (1, 1 << 20):  # a standby that died (killed) before its request: the caller forks its own
    standby.start(ready)
    pid = standby._WAITING[0]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    with standby.running(pid_of, "x" * size) as later:
        out.setdefault("died", []).append(later is None)
    try:
        os.waitpid(pid, os.WNOHANG)
        out.setdefault("reaped", []).append(False)
    except ChildProcessError:
        out.setdefault("reaped", []).append(True)

standby.start(ready)
pid = standby._WAITING[0]
standby._dismiss()  # what exit does with a standby never asked
try:
    os.kill(pid, 0)
    out["dismissed"] = False
except ProcessLookupError:
    out["dismissed"] = True
print(json.dumps(out))
"""


def test_a_standby_runs_one_function_in_a_child_of_its_own(tmp_path):
    """The standby readies itself (``ready``, in its own process), runs the one function it is
    given and hands back its value or its exception (with the child's traceback as the cause),
    even where a process forked after it holds its pipes; it is taken once; a request that does
    not pickle, or a standby that died before its request (a small one, or one larger than a
    pipe holds), leaves the caller to fork its own, the dead one reaped; one left uncollected is
    killed, and one never asked is dismissed at exit."""
    env = {**os.environ, "READY_FILE": str(tmp_path / "ready")}
    r = subprocess.run([sys.executable, "-c", CALLS], capture_output=True, text=True, timeout=120, env=env,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"elsewhere": True, "value": 42, "readied": True, "taken": True,
                                    "raised": "no such dtype", "cause": True, "unpicklable": True,
                                    "killed": True, "dismissed": True, "died": [True, True],
                                    "reaped": [True, True]}


PLAIN = "import sys\nfrom bce_audit.cli import main\nmain()\n"  # the command without its standby


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_sweep_with_its_standby_is_the_sweep_without(dtype):
    """`python -m bce_audit sweep` searches its key points in the standby it started; the same
    command without one (its function called directly) forks its searcher when asked: the same
    document, byte for byte."""
    args = ["sweep", "--dtype", dtype, "--points", "3001", "--range", "-120:120", "--rows", "5", "--format",
            "json", "--no-cache", "--jobs", "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS",)}
    with_standby = subprocess.run([sys.executable, "-m", "bce_audit", *args], capture_output=True, text=True,
                                  timeout=300, env=env, cwd=ROOT)
    without = subprocess.run([sys.executable, "-c", PLAIN, *args], capture_output=True, text=True,
                             timeout=300, env=env, cwd=ROOT)
    assert with_standby.returncode == without.returncode == 0, with_standby.stderr + without.stderr
    assert json.loads(with_standby.stdout)["keypoints"]
    assert with_standby.stdout == without.stdout


USED = r"""
import json, os, sys
from bce_audit import keypoints, records, standby, sweep

asked = []
real = standby.running

def running(fn, *args):
    asked.append(fn.__name__)
    return real(fn, *args)

standby.running = running
sweep.standby.running = running
fail = sys.argv[1] == "fail"
if fail:
    def failing(*a, **k):
        raise ValueError("the key-point search failed")
    keypoints.keypoints = failing  # (before the standby's fork: it searches with this one)
assert standby.start(keypoints.ready)
chunks = []
s = records.Settings(points=12 * sweep.CHUNK, range=(-60.0, 60.0), keep=11, dtypes=("float32",))
try:
    r = sweep.run_sweep(s, jobs=2, progress=chunks.append)
    out = {"keypoints": len(r.keypoints)}
except ValueError as e:
    out = {"told": str(e), "chunks": len(chunks)}
out["asked"] = asked
out["left"] = standby._WAITING is None
print(json.dumps(out))
"""


def test_a_sweep_hands_its_search_to_the_standby_and_hears_of_its_failure():
    """`run_sweep` gives its key-point search to the waiting standby (and takes it: none left);
    a search that fails there is raised after the next chunk, as a forked searcher's is."""
    ok = subprocess.run([sys.executable, "-c", USED, "ok"], capture_output=True, text=True, timeout=300,
                        cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"keypoints": json.loads(ok.stdout)["keypoints"], "asked": ["_search"],
                                     "left": True}
    assert json.loads(ok.stdout)["keypoints"] > 5
    bad = subprocess.run([sys.executable, "-c", USED, "fail"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert bad.returncode == 0, bad.stderr
    out = json.loads(bad.stdout)
    assert out["told"] == "the key-point search failed" and 1 <= out["chunks"] < 12
    assert out["asked"] == ["_search"] and out["left"]


def test_only_sweep_starts_a_standby():
    """Other commands (here `check`) fork no standby: nothing readies a search they do not make."""
    code = ("import atexit, sys\nfrom bce_audit import standby\nreal = standby.start\ncalls = []\n"
            "standby.start = lambda ready: calls.append(1) or real(ready)\n"
            "atexit.register(lambda: print('STARTS', len(calls), file=sys.stderr))\n"
            "sys.argv = ['bce-audit', *sys.argv[1:]]\nimport runpy\n"
            "runpy.run_module('bce_audit', run_name='__main__')\n")
    for argv, starts in ((["check", "0.5", "--dtype", "float16"], 0),
                         (["sweep", "--dtype", "float16", "--points", "11", "--no-cache"], 1)):
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                           cwd=ROOT)
        assert f"STARTS {starts}" in r.stderr, r.stderr
