"""A devnet's ports: chosen outside the kernel's ephemeral range (where any outgoing connection may
take a port between choosing it and the service binding it) and reserved against parallel devnets."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from haca.devnet import processes


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = processes.free_ports(12)
    assert len(set(ports)) == 12
    floor = processes._ephemeral_floor()
    assert all(processes._PORT_FLOOR <= p < floor for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_reserved_port_is_not_handed_out_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(processes, "_ephemeral_floor", lambda: processes._PORT_FLOOR + 1010)
    first = set(processes.free_ports(500))
    second = set(processes.free_ports(500))
    assert first.isdisjoint(second)
    with pytest.raises(OSError, match="no 20 free loopback ports"):
        processes.free_ports(20)  # all but 10 of the range's 1,010 ports are reserved
