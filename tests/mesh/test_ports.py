"""Ports chosen for child processes: free, below the kernel's ephemeral range, never twice."""

import socket

from heraldo.mesh import ports
from heraldo.mesh.ports import ephemeral_range, free_port, free_port_range, port_is_free
from heraldo.mesh.supervisor import MeshPorts


def test_a_chosen_port_is_below_the_ephemeral_range_and_bindable():
    port = free_port()

    assert ports.LOWEST_CHOSEN <= port < ephemeral_range().start
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))


def test_a_port_is_not_given_out_twice():
    chosen = [free_port() for _ in range(200)]

    assert len(set(chosen)) == len(chosen)


def test_a_run_of_ports_is_consecutive_and_free():
    run = free_port_range(4)

    assert len(run) == 4 and all(port_is_free(port) for port in run)
    assert free_port() not in run


def test_a_taken_port_is_not_free():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()

        assert not port_is_free(holder.getsockname()[1])


def test_mesh_ports_for_tests_are_distinct():
    chosen = MeshPorts.free(notifiers=3)
    every = [getattr(chosen, name) for name in vars(chosen) if name != "first_notifier"]
    every += range(chosen.first_notifier, chosen.first_notifier + 3)

    assert len(set(every)) == len(every)
    assert all(port < ephemeral_range().start for port in every)


def test_without_room_below_the_ephemeral_range_the_kernel_chooses(monkeypatch, tmp_path):
    kernels_range = ephemeral_range()
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text("1024\t65535\n")
    monkeypatch.setattr(ports, "EPHEMERAL_RANGE_FILE", narrow)

    run = free_port_range(2)

    assert all(port_is_free(port) for port in run)
    # The kernel's choice for bind(0), which lies in its ephemeral range.
    assert run.start in kernels_range

