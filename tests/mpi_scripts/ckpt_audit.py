"""MPI worker for tests/test_distributed_checkpoint.py: runs a training script unchanged while an
audit hook records every file this rank creates, writes, renames or deletes inside a directory.

    mpiexec -n 2 python ckpt_audit.py WATCH_DIR REPORT_DIR launch/train_iris.py [script args...]

When the script ends (normally, by ``sys.exit`` or by an exception) each rank writes
REPORT_DIR/rank<R>.json: ``{"exit": CODE, "writes": [[event, path], ...]}`` with the operations
on paths inside WATCH_DIR, so the test can check that only rank 0 wrote files and how every rank
exited. (A file, not stdout: the launcher may interleave the ranks' output mid-line.)
"""
import json
import os
import runpy
import sys

WATCH = os.path.abspath(sys.argv[1])
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# Launchers' rank variables: read from the environment, since the script may end after MPI has
# been finalised.
RANK = next((os.environ[v] for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK") if v in os.environ), "0")
writes = []


def _inside(path) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):  # a file descriptor
        return False
    path = os.path.abspath(os.fsdecode(path))
    return path == WATCH or path.startswith(WATCH + os.sep)


def _audit(event, args):
    if event == "open":
        path, _mode, flags = args
        if isinstance(flags, int) and flags & WRITE_FLAGS and _inside(path):
            writes.append([event, os.fsdecode(path)])
    elif event in ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.link", "os.symlink"):
        for path in args[:2] if event in ("os.rename", "os.link", "os.symlink") else args[:1]:
            if _inside(path):
                writes.append([event, os.fsdecode(path)])


REPORT_DIR = sys.argv[2]
script = sys.argv[3]
sys.argv = sys.argv[3:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
sys.addaudithook(_audit)
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    raise
finally:
    report = {"exit": code, "writes": list(writes)}  # a copy: the report's own open is outside WATCH
    with open(os.path.join(REPORT_DIR, f"rank{RANK}.json"), "w") as f:
        json.dump(report, f)
