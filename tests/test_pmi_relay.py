"""Tests for distnn.distributed.pmi_relay: the PMI-1 relay between MPICH and Slurm's pmi2 server.

The server here behaves as Slurm 22.05's plugin does (one ``read`` of at most 1024 bytes per
request); the client writes what MPICH's PMI-1 client writes. The job-level check (a real srun job
whose MPICH sees the lowered ``vallen_max``) is in test_cluster_slurm.py.
"""
import os
import socket

import pytest

from distnn.distributed import pmi_relay

# MPICH's put of one business-card segment: (vallen_max - 2) / 2 bytes, hex-encoded (incompressible).
PUT_PREFIX = b"cmd=put kvsname=4242.0 key=-allgather-shm-1-1023-seg-10/10 value="


def put_line(vallen_max: int) -> bytes:
    return PUT_PREFIX + b"A7" * ((vallen_max - 2) // 2) + b"\n"


class SlurmLikeServer:
    """The server end of PMI_FD: answers init and get_maxes, and records each read as one request."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)

    def request(self) -> bytes:
        return self.sock.recv(pmi_relay.SLURM_READ_BYTES)

    def answer(self, text: bytes) -> None:
        self.sock.sendall(text)


@pytest.fixture
def relayed(monkeypatch):
    """(client socket, Slurm-like server) with the relay between them."""
    client_side, server_side = socket.socketpair()
    monkeypatch.setenv("PMI_FD", str(client_side.fileno()))
    relay = pmi_relay.start()
    client = socket.socket(fileno=int(os.environ["PMI_FD"]))
    client.settimeout(10)
    yield client, SlurmLikeServer(server_side), relay
    client.close()
    server_side.close()
    relay.wait(timeout=10)


def exchange(client: socket.socket, server: SlurmLikeServer, request: bytes, answer: bytes) -> bytes:
    """The client's request reaches the server as it was sent; returns what the client gets back."""
    client.sendall(request)
    assert server.request() == request
    server.answer(answer)
    return client.recv(4096)


def handshake(client: socket.socket, server: SlurmLikeServer) -> bytes:
    """PMI-1 init and get_maxes; returns the maxes line the client got."""
    init_answer = b"cmd=response_to_init rc=0 pmi_version=1 pmi_subversion=1\n"
    assert exchange(client, server, b"cmd=init pmi_version=1 pmi_subversion=1\n", init_answer) == init_answer
    return exchange(client, server, b"cmd=get_maxes\n",
                    b"cmd=maxes rc=0 kvsname_max=256 keylen_max=64 vallen_max=1024\n")


def test_without_the_relay_a_long_put_is_cut_by_slurms_single_read():
    """The failure the relay exists for: the segment MPICH sizes for vallen_max=1024 spans two reads."""
    client, server_sock = socket.socketpair()
    server = SlurmLikeServer(server_sock)
    line = put_line(1024)
    client.sendall(line)
    first = server.request()
    assert len(line) > pmi_relay.SLURM_READ_BYTES and first != line and not first.endswith(b"\n")
    client.close(), server_sock.close()


def test_relay_lowers_vallen_max_so_every_put_fits_one_read(relayed):
    client, server, _ = relayed
    maxes = handshake(client, server)
    assert maxes == f"cmd=maxes rc=0 kvsname_max=256 keylen_max=64 vallen_max={pmi_relay.RELAY_VALLEN_MAX}\n".encode()
    line = put_line(pmi_relay.RELAY_VALLEN_MAX)
    assert len(line) <= pmi_relay.SLURM_READ_BYTES
    client.sendall(line)
    assert server.request() == line
    server.answer(b"cmd=put_result rc=0\n")
    assert client.recv(4096) == b"cmd=put_result rc=0\n"


def test_relay_forwards_whole_lines_only(relayed):
    """Requests batched in one client write arrive whole; a request split over two writes waits for its end."""
    client, server, _ = relayed
    handshake(client, server)
    client.sendall(b"cmd=get kvsname=1.0 key=a\ncmd=get kvsname=1.0 key=b\ncmd=barr")
    received = b""
    while received.count(b"\n") < 2:
        received += server.request()
    assert received == b"cmd=get kvsname=1.0 key=a\ncmd=get kvsname=1.0 key=b\n"
    server.sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        server.request()  # "cmd=barr" is not a line yet
    server.sock.settimeout(10)
    client.sendall(b"ier_in\n")
    assert server.request() == b"cmd=barrier_in\n"


def test_relay_passes_a_pmi2_wire_client_through_unchanged(relayed):
    """A PMI-2 client (length-prefixed, no newlines after its init) is relayed byte for byte."""
    client, server, _ = relayed
    answer = b"cmd=response_to_init pmi_version=2 pmi_subversion=0 rc=0\n"
    assert exchange(client, server, b"cmd=init pmi_version=2 pmi_subversion=0\n", answer) == answer
    client.sendall(b"    22cmd=fullinit;pmirank=0;")
    assert server.request() == b"    22cmd=fullinit;pmirank=0;"


def test_relay_ends_when_the_rank_closes_its_end(relayed):
    client, server, relay = relayed
    handshake(client, server)
    client.close()
    assert relay.wait(timeout=10) == 0
    assert server.request() == b""  # the relay closed Slurm's end too


@pytest.mark.parametrize("environ, expected", [
    ({"PMI_FD": "11", "SLURM_MPI_TYPE": "pmi2"}, True),                           # srun --mpi=pmi2
    ({"PMI_FD": "5", "SLURM_MPI_TYPE": "pmi2", "PMI_HOSTNAME": "n1"}, False),     # hydra inside Slurm
    ({"PMI_FD": "5", "PMI_HOSTNAME": "vm"}, False),                               # hydra
    ({"SLURM_MPI_TYPE": "pmi2"}, False),                                          # no PMI socket
    ({"PMI_FD": "11", "SLURM_MPI_TYPE": "pmi2", "DISTNN_PMI_RELAY": "0"}, False),
    ({"PMI_FD": "5", "PMI_HOSTNAME": "vm", "DISTNN_PMI_RELAY": "1"}, True),
])
def test_wanted_only_for_slurms_pmi2_server(environ, expected):
    assert pmi_relay.wanted(environ) is expected


def test_wanted_rejects_a_bad_setting():
    with pytest.raises(ValueError, match=r"DISTNN_PMI_RELAY must be 0 \(off\) or 1 \(on\).*Received: "
                                         r"DISTNN_PMI_RELAY='yes'"):
        pmi_relay.wanted({"PMI_FD": "11", "DISTNN_PMI_RELAY": "yes"})


def test_forcing_the_relay_without_a_pmi_socket_is_an_error():
    with pytest.raises(ValueError, match=r"DISTNN_PMI_RELAY=1 asks for the PMI relay, but this process has no "
                                         r"PMI_FD.*Received: DISTNN_PMI_RELAY=1 without PMI_FD"):
        pmi_relay.wanted({"DISTNN_PMI_RELAY": "1", "SLURM_MPI_TYPE": "pmi2"})
