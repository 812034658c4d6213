"""`distnn-bench`: reproducible speed measurements, printed side by side with a reference.

```
distnn-bench allreduce -np 2                       # 4 KiB .. 256 MiB, ring/mpi/auto vs the mpi backend
distnn-bench allreduce -np 4 --sizes 1M,64M --backends ring --compression fp16
cluster/emulate/two-node.sh mpiexec -- -hosts n1,n2 -n 2 distnn-bench allreduce --link   # vs the network
distnn-bench anatomy timeline.json                 # a DISTNN_TIMELINE file: each phase's share of a step
```

A subcommand that takes `-np N` and is started outside MPI re-launches itself with the
`mpiexec` beside this Python (the one of the `mpich` wheel) or on PATH. Add a subcommand
with a function `_add_<name>(subparsers)` that registers its parser with
`func=<run function>` and call it in `build_parser`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from distnn import bench_link
from distnn.distributed import anatomy, create_communicator, launched_by_mpi
from distnn.distributed.ring import parse_bytes

ALLREDUCE_BACKENDS = ("ring", "mpi", "auto", "hierarchical")
REFERENCE = "mpi"


def find_mpiexec() -> str | None:
    """The `mpiexec` beside this interpreter (the `mpich` wheel's), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def relaunch_under_mpi(nprocs: int, argv: list[str]) -> int:
    """Runs `python -m distnn.bench argv...` on `nprocs` MPI processes; returns its exit status."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        sys.exit("distnn-bench: mpiexec not found beside Python or on PATH; install the "
                 "`mpich` extra (`pip install distnn[mpich]`) or run under your MPI launcher.")
    env = dict(os.environ, DISTNN_USE_MPI="1")
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(variable, "1")  # one BLAS thread per rank unless the user chose
    command = [mpiexec, "-n", str(nprocs), sys.executable, "-m", "distnn.bench", *argv]
    return subprocess.call(command, env=env)


def parse_sizes(text: str, factor: int = 2) -> list[int]:
    """Byte sizes from `"4K..256M"` (a geometric range, step `factor`) or `"4K,1M,64M"`.

    Args:
        text: the `--sizes` argument.
        factor: ratio between consecutive sizes of a range.
    """
    if ".." in text:
        low, high = (parse_bytes(part) for part in text.split("..", 1))
        if not 0 < low <= high or factor < 2:
            raise ValueError(f"`--sizes` range must be LOW..HIGH with 0 < LOW <= HIGH and "
                             f"`--factor` >= 2. Received: --sizes={text} --factor={factor}")
        sizes = [low]
        while sizes[-1] * factor <= high:
            sizes.append(sizes[-1] * factor)
        return sizes
    return [parse_bytes(part) for part in text.split(",") if part.strip()]


def _format_bytes(nbytes: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return str(nbytes)


def _add_allreduce(subparsers) -> None:
    parser = subparsers.add_parser(
        "allreduce", help="allreduce time and bandwidth per backend, vs the mpi backend (MPI_Iallreduce)",
        description="Times in-place allreduce of each backend on buffers of each size, "
                    "interleaved with the mpi backend (MPI_Iallreduce) in the same run. time: minimum (or "
                    "median) over iterations of the slowest rank; algbw = bytes / time; busbw = algbw * "
                    "2(N-1)/N (the bandwidth each link sustains, as in nccl-tests); "
                    "'x mpi' = mpi backend time / backend time. Each result is verified once.")
    parser.add_argument("-np", "-n", dest="np", type=int, default=2,
                        help="number of MPI processes when started outside MPI (default 2)")
    parser.add_argument("--sizes", default="4K..256M", type=_checked(parse_sizes),
                        help="buffer sizes in bytes: LOW..HIGH (geometric, see --factor) or a "
                             "comma list; K/M/G are binary units (default 4K..256M)")
    parser.add_argument("--factor", type=int, default=2, help="step of a --sizes range (default 2)")
    parser.add_argument("--backends", default="ring,mpi,auto", type=_backend_list,
                        help="comma list among ring, mpi, auto, hierarchical (default ring,mpi,auto; mpi "
                             "is always measured, as the reference)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--op", choices=("sum", "average"), default="sum")
    parser.add_argument("--compression", choices=("none", "fp16"), default="none")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed iterations per size (default: enough for --time-per-size)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations (default 3)")
    parser.add_argument("--stat", choices=("min", "median"), default="min",
                        help="statistic over iterations of the slowest rank's time (default "
                             "min: the least disturbed by other load on the machine)")
    parser.add_argument("--time-per-size", type=float, default=1.0,
                        help="seconds of timed iterations per size when --iters is not given")
    parser.add_argument("--link", action="store_true",
                        help="also measure the network's own limit: a raw TCP stream in both directions "
                             "between rank 0 and the first rank on another node, before and after the "
                             "table; adds an 'x link' column (busbw / link limit)")
    parser.add_argument("--link-device", default=None,
                        help="network device of --link (default: UCX_NET_DEVICES when it names one)")
    parser.add_argument("--link-bytes", default="64M", type=_checked(parse_bytes),
                        help="bytes streamed each way by --link (default 64M)")
    parser.set_defaults(func=run_allreduce)


def _checked(parse):
    """An argparse `type` that validates with `parse` but keeps the text (parsed later,
    with the other arguments), so errors show before any MPI launch."""
    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return check


def _backend_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or set(names) - set(ALLREDUCE_BACKENDS):
        raise argparse.ArgumentTypeError(f"expected a comma list among {ALLREDUCE_BACKENDS}. "
                                         f"Received: {text!r}")
    return names


def run_allreduce(args: argparse.Namespace) -> int:
    """The `allreduce` subcommand, run on every rank; rank 0 prints the table."""
    names = [REFERENCE] + [name for name in dict.fromkeys(args.backends) if name != REFERENCE]
    dtype = np.dtype(args.dtype)
    sizes = parse_sizes(args.sizes, args.factor)
    bad = [size for size in sizes if size <= 0 or size % dtype.itemsize]
    if bad:
        raise ValueError(f"`--sizes` must be positive multiples of {dtype.itemsize} bytes "
                         f"({dtype.name}). Received: {[_format_bytes(size) for size in bad]}")
    compression = None if args.compression == "none" else args.compression
    comms = {name: create_communicator(name, compression=compression) for name in names}
    reference = comms[REFERENCE]
    n, rank = reference.size, reference.rank
    link = _link(args, reference, "before the table") if args.link else None

    if rank == 0:
        _print_header(args, names, reference)
    failed = False
    for nbytes in sizes:
        timings, ok = _measure(comms, nbytes, dtype, args)
        failed |= not all(ok.values())
        if rank == 0:
            _print_row(names, comms, nbytes, dtype, timings, ok, n, args.stat, link)
    if args.link:
        _link(args, reference, "after the table")
    if rank == 0 and failed:
        print("# FAILED: some results were wrong (see the check column)", flush=True)
    return int(failed)


def _link(args: argparse.Namespace, reference, when: str) -> float:
    """The link limit in bytes/s per direction (see distnn.bench_link); rank 0 prints it."""
    device = args.link_device or bench_link.default_device()
    if device is None:
        raise ValueError("`--link` needs the network device: pass --link-device DEV (or set UCX_NET_DEVICES "
                         "to one device, as cluster/emulate/two-node.sh env does). Received: no device")
    rate, peer = bench_link.measure_link(reference, device, parse_bytes(args.link_bytes))
    if reference.rank == 0:
        print(f"# link limit {when}: {rate / 1e9:.3f} GB/s per direction (raw TCP both ways at once, "
              f"rank 0 <-> rank {peer} over {device}, {_format_bytes(parse_bytes(args.link_bytes))} each way)",
              flush=True)
    return rate


def _measure(comms: dict, nbytes: int, dtype: np.dtype, args: argparse.Namespace):
    """Per-backend iteration times (slowest rank each) and verification at one size."""
    reference = comms[REFERENCE]
    n, rank = reference.size, reference.rank
    pattern = np.arange(nbytes // dtype.itemsize) % 251
    # Small integers: exact in float16/32/64 and in any summation order.
    template = (pattern + rank).astype(dtype)
    expected = (pattern * n + n * (n - 1) // 2).astype(dtype)
    if args.op == "average":
        expected /= n
    buffer = np.empty_like(template)

    def run(name: str) -> float:
        np.copyto(buffer, template)
        reference.barrier()
        start = time.perf_counter()
        comms[name].allreduce(buffer, op=args.op)
        return time.perf_counter() - start

    ok, estimate = {}, 0.0
    for name in comms:
        run(name)
        # Compression rounds through float16 (averages need not be representable).
        ok[name] = bool(np.allclose(buffer, expected, rtol=1e-3, atol=0)
                        if args.compression != "none" else np.array_equal(buffer, expected))
        # The fastest warmup call estimates the cost: one disturbed call must not cut
        # the iteration count.
        estimate += min([run(name) for _ in range(max(args.warmup - 1, 1))])
    ok = {name: all(flags) for name, flags in
          zip(comms, zip(*reference.allgather_obj(list(ok.values()))))}
    iters = args.iters or reference.bcast_obj(
        int(min(max(args.time_per_size / max(estimate, 1e-9), 5), 1000)))
    times = {name: [] for name in comms}
    order = list(comms)
    for i in range(iters):
        # Interleaved, so machine noise hits every backend alike, and rotated, because a
        # collective measured right after another one can be slower (order effect).
        for name in order[i % len(order):] + order[:i % len(order)]:
            times[name].append(run(name))
    per_rank = reference.gather_obj(times)
    if rank != 0:
        return None, ok
    return {name: [max(ranks) for ranks in zip(*(t[name] for t in per_rank))]
            for name in comms}, ok


def _print_header(args: argparse.Namespace, names: list[str], reference) -> None:
    version = reference._MPI.Get_library_version().strip().splitlines()[0]
    print(f"# distnn-bench allreduce: {reference.size} ranks ({reference.local_size} on this "
          f"node), {args.dtype}, op={args.op}, compression={args.compression}; {version}")
    print(f"# time = {args.stat} over iterations of the slowest rank; busbw = algbw * 2(N-1)/N; "
          "x mpi = mpi backend time / time")
    columns = [f"{'size':>7} {'count':>10} {'iters':>5}"]
    for name in names:
        extra = ("" if name == REFERENCE else f" {'x mpi':>6}") + (f" {'x link':>6}" if args.link else "")
        pick = f" {'uses':>4}" if name in ("auto", "hierarchical") else ""
        columns.append(f"{name + ' time(us)':>15} {'algbw':>6} {'busbw':>6}{extra}{pick}")
    print("#" + " |".join(columns) + " | check", flush=True)


def _print_row(names, comms, nbytes, dtype, timings, ok, n, stat, link: float | None) -> None:
    reduce = min if stat == "min" else statistics.median
    times = {name: reduce(values) for name, values in timings.items()}
    cells = [f" {_format_bytes(nbytes):>7} {nbytes // dtype.itemsize:>10} "
             f"{len(timings[REFERENCE]):>5}"]
    for name in names:
        seconds = times[name]
        algbw = nbytes / seconds / 1e9
        cell = f"{seconds * 1e6:>15.1f} {algbw:>6.3f} {algbw * 2 * (n - 1) / n:>6.3f}"
        if name != REFERENCE:
            cell += f" {times[REFERENCE] / seconds:>6.2f}"
        if link is not None:
            cell += f" {algbw * 2 * (n - 1) / n * 1e9 / link:>6.2f}"
        if name in ("auto", "hierarchical"):
            wire = comms[name].compression.wire_dtype(dtype).itemsize * (nbytes // dtype.itemsize)
            cell += f" {comms[name].select(wire)[:4]:>4}"
        cells.append(cell)
    failures = [name for name in names if not ok[name]]
    print(" |".join(cells) + " | " + ("OK" if not failures else "FAIL " + ",".join(failures)),
          flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distnn-bench", description=__doc__.split("\n\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_allreduce(subparsers)
    anatomy.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `distnn-bench` (and `python -m distnn.bench`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "np", None) is not None and not launched_by_mpi():
        if args.np < 1:
            build_parser().error(f"-np must be at least 1. Received: -np {args.np}")
        return relaunch_under_mpi(args.np, argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
