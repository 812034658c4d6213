"""The network's own limit for `distnn-bench allreduce --link`: a raw TCP stream between two nodes.

Rank 0 and the first rank on another node (node membership from MPI's shared-memory split) open a
plain TCP connection over the network device that MPI uses and stream the same number of bytes in
both directions at once, as an allreduce does (each rank sends and receives its share). The result,
bytes per second per direction, is the ceiling an allreduce's busbw can reach on that link, measured
in the same run as the allreduce it is compared with. No iperf: Python sockets, which release the
interpreter lock during the copy, reach the unshaped veth's ~7 Gbit/s on 2 cores.
"""
from __future__ import annotations

import fcntl
import os
import socket
import struct
import threading
import time

import numpy as np

_SIOCGIFADDR = 0x8915  # Linux ioctl: the IPv4 address of a network device
_CHUNK = 1 << 20


def device_address(device: str) -> str:
    """The IPv4 address of network device `device` (Linux).

    Raises:
        ValueError: naming the device when it has no IPv4 address here.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            packed = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("256s", device[:15].encode()))
        except OSError as exc:
            raise ValueError(f"`--link-device` must name a network device with an IPv4 address on every "
                             f"node. Received: --link-device={device} ({exc.strerror})") from None
    return socket.inet_ntoa(packed[20:24])


def default_device() -> str | None:
    """The device UCX is told to use (`UCX_NET_DEVICES`, as the emulated cluster's env sets), if one."""
    devices = [name.split(":")[0] for name in os.environ.get("UCX_NET_DEVICES", "").split(",") if name.strip()]
    return devices[0] if len(devices) == 1 and devices[0] != "all" else None


def _stream(sock: socket.socket, nbytes: int) -> float:
    """Sends and receives `nbytes` at once on `sock`; returns the seconds both took."""
    payload = memoryview(np.ones(_CHUNK, np.uint8))
    into = memoryview(bytearray(_CHUNK))

    def send() -> None:
        left = nbytes
        while left:
            sock.sendall(payload[:min(left, _CHUNK)])
            left -= min(left, _CHUNK)

    start = time.perf_counter()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    left = nbytes
    while left:
        got = sock.recv_into(into, min(left, _CHUNK))
        if not got:
            raise ConnectionError("the peer closed the link test's connection early")
        left -= got
    sender.join()
    return time.perf_counter() - start


def measure_link(comm, device: str, nbytes: int) -> tuple[float, int]:
    """Per-direction bytes/s of a TCP stream between rank 0 and the first rank on another node.

    Collective over `comm` (a distnn MPI communicator); every rank gets the result.

    Returns:
        `(bytes per second per direction, the peer's rank)`.

    Raises:
        ValueError: all ranks share one node (there is no link to measure).
    """
    MPI = comm._MPI
    node = comm.comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    node_id = node.allreduce(comm.rank, op=MPI.MIN)  # the smallest world rank of this node
    node.Free()
    node_ids = comm.allgather_obj(node_id)
    peer = next((r for r, n in enumerate(node_ids) if n != node_ids[0]), None)
    if peer is None:
        raise ValueError("`--link` measures the network between two nodes, but all ranks run on one "
                         "node. Received: --link with a single-node launch")
    listener = None
    address = None
    if comm.rank == peer:
        listener = socket.create_server((device_address(device), 0))
        address = listener.getsockname()
    address = comm.bcast_obj(address, root=peer)
    seconds = 0.0
    if comm.rank in (0, peer):
        if comm.rank == 0:
            sock = socket.create_connection(address)
        else:
            sock, _ = listener.accept()
            listener.close()
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _stream(sock, _CHUNK)  # warm-up: connection set-up and the first window
            comm.barrier()  # both ends start together (the other ranks wait in it)
            seconds = _stream(sock, nbytes)
    else:
        comm.barrier()
    slowest = max(comm.allgather_obj(seconds))
    return nbytes / slowest, peer
