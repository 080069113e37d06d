"""`Stack.up` checks that run before any server starts: a port in use and a stale state file."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mycelium.config import Orchestration
from mycelium.orchestration.stack import OrchestrationError, Process, Stack, StackState, is_alive, start_time

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def listener():
    """A plain socket that listens on a free port of 127.0.0.1, as another server would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def sleeper():
    """A process in its own session, as `up` starts its workers; killed at the end if still running."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    yield child
    child.kill()
    child.wait()


def make_stack(tmp_path: Path, port: int) -> Stack:
    return Stack(PROJECT_ROOT, PROJECT_ROOT / "params.yaml", Orchestration(port=port),
                 prefect_home=tmp_path / "prefect", port=port)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_up_rejects_port_in_use(tmp_path, listener):
    stack = make_stack(tmp_path, listener)

    with pytest.raises(OrchestrationError, match=f"Port {listener} on 127.0.0.1 is already in use.*--port 0"):
        stack.up()

    assert not stack.state_path.exists()
    assert not (stack.logs / "server.log").exists()


def test_up_stops_workers_of_stale_stack(tmp_path, listener, sleeper):
    stack = make_stack(tmp_path, listener)
    server = Process("server", dead_pid(), str(tmp_path / "server.log"))
    worker = Process("worker-1", sleeper.pid, str(tmp_path / "worker.log"), "pool", start_time(sleeper.pid))
    stack.state_path.parent.mkdir(parents=True)
    stack._write(StackState("http://127.0.0.1:1/api", "http://127.0.0.1:1", str(stack.prefect_home),
                            str(stack.params_path), server, [worker]))

    # The held port stops `up` after it handled the stale state, so no server starts.
    with pytest.raises(OrchestrationError, match="already in use"):
        stack.up()

    assert sleeper.wait(timeout=10) is not None
    assert not stack.state_path.exists()


def test_down_spares_reused_pid(tmp_path, sleeper):
    stack = make_stack(tmp_path, 0)
    recorded = start_time(sleeper.pid)
    assert recorded is not None
    # A different recorded start time represents the process that had this pid before.
    worker = Process("worker-1", sleeper.pid, str(tmp_path / "worker.log"), "pool", recorded - 1)
    server = Process("server", dead_pid(), str(tmp_path / "server.log"))
    stack.state_path.parent.mkdir(parents=True)
    stack._write(StackState("http://127.0.0.1:1/api", "http://127.0.0.1:1", str(stack.prefect_home),
                            str(stack.params_path), server, [worker]))

    assert stack.down() == []
    assert is_alive(sleeper.pid)
    assert not worker.is_running()
