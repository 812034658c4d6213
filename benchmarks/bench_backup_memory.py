"""Peak memory of rank 0 with training backups, against the same training without them.

A model of about 100M parameters (4096 -> 8192 -> 8192, Adam: weights, gradients, two moments and
a scratch buffer, about 2 GB in all) trains two steps of 8 samples in a fresh process per case:

    reference   fit() without callbacks
    backup      fit() with BackupAndRestore(save_freq=1): two backups of 1.2 GB are written
    resume      the second backup removed, fit() again: the first is checked and loaded, and the
                second step trained

Each case's peak RSS (``VmHWM``) is printed with its ratio to the reference measured in the
same invocation. Run it against another checkout (``--pythonpath``) to compare versions:

    python benchmarks/bench_backup_memory.py
    python benchmarks/bench_backup_memory.py --pythonpath /path/to/other/checkout --scale 0.25
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def child(case: str, directory: str, scale: float) -> None:
    """One case in this process: prints its parameter count and peak RSS as JSON."""
    import numpy as np  # noqa: PLC0415 - the parent process stays small

    from distnn.callbacks import BackupAndRestore  # noqa: PLC0415
    from distnn.layers import Dense  # noqa: PLC0415
    from distnn.models import Sequential  # noqa: PLC0415

    features, units = int(4096 * scale), int(8192 * scale)
    model = Sequential([Dense(units, input_shape=(features,)), Dense(units)])
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).normal(size=(16, features)).astype("float32")
    callbacks = [] if case == "reference" else [BackupAndRestore(directory, save_freq=1, delete_checkpoint=False)]
    model.fit(x, np.zeros((16, units), "float32"), batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
    print(json.dumps({"params": model.count_params(), "peak_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM on Linux, where ru_maxrss would include the parent's peak
    (the kernel carries it across exec)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: str, directory: str, scale: float, pythonpath: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, os.path.join(HERE, "bench_backup_memory.py"), "--child", case,
                           "--dir", directory, "--scale", str(scale)], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        raise SystemExit(f"case {case} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="layer widths relative to 4096 -> 8192 -> 8192")
    parser.add_argument("--pythonpath", default=None, help="import distnn from this checkout")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dir, args.scale)
        return
    with tempfile.TemporaryDirectory() as directory:
        backups = os.path.join(directory, "backups")
        results = {case: run_case(case, backups, args.scale, args.pythonpath) for case in ("reference", "backup")}
        os.unlink(os.path.join(backups, max(n for n in os.listdir(backups) if n.startswith("backup-"))))
        results["resume"] = run_case("resume", backups, args.scale, args.pythonpath)
    reference = results["reference"]["peak_mb"]
    print(f"model: {results['reference']['params'] / 1e6:.1f}M parameters "
          f"(distnn from {args.pythonpath or 'this checkout'})")
    for case, result in results.items():
        print(f"{case:>9}: peak RSS {result['peak_mb']:8.0f} MB   {result['peak_mb'] / reference:5.2f}x reference")


if __name__ == "__main__":
    main()
