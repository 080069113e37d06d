"""`mycelium orchestrate up` and `down`: a Prefect server, process workers and the deployments.

``up`` starts ``prefect server start`` on ``orchestration.host:port``, waits for its health
check, runs ``flows/deploy.py`` (pools, limits, deployments), starts the workers of both
pools as subprocesses and writes their process ids and the API URL to
``.prefect/orchestration.json``. ``down`` stops the workers, marks their unfinished flow runs
as Crashed, then stops the server. Every process runs in its own session, so ``down`` stops a
worker together with the flow runs it started.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mycelium.config import Orchestration
from mycelium.errors import MyceliumError

logger = logging.getLogger(__name__)

STATE_FILE = "orchestration.json"
STOP_TIMEOUT_S = 20.0


class OrchestrationError(MyceliumError):
    """The Prefect server, a worker or the registration of deployments failed to start or stop."""


@dataclass
class Process:
    """One process that ``up`` started: its role, pid, log file and start time.

    ``started`` is the start time in clock ticks since boot (field 22 of ``/proc/<pid>/stat``).
    It distinguishes the process from a later one that reuses the pid. It is None in state
    files written before it was recorded.
    """

    role: str
    pid: int
    log: str
    pool: str | None = None
    started: int | None = None

    def is_running(self) -> bool:
        """Return True when the pid is alive and still belongs to this process."""
        if not is_alive(self.pid):
            return False
        return self.started is None or start_time(self.pid) in (None, self.started)


@dataclass
class StackState:
    """The processes and URLs that ``up`` started, as written to the state file."""

    api_url: str
    ui_url: str
    prefect_home: str
    params_path: str
    server: Process
    workers: list[Process] = field(default_factory=list)
    deployments: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> StackState:
        raw = json.loads(path.read_text())
        return cls(**{**raw, "server": Process(**raw["server"]), "workers": [Process(**w) for w in raw["workers"]]})


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Return True when a socket already listens on ``host:port``.

    The bind test sets SO_REUSEADDR as uvicorn does, so a port with only TIME_WAIT
    connections left from a stopped server counts as free.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def start_time(pid: int) -> int | None:
    """Return the start time of ``pid`` in clock ticks since boot, or None when it is unknown."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child that exited but was not waited for is a zombie: it counts as stopped.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Stack:
    """The local orchestration of one project folder.

    Args:
        root: the project folder, which contains ``flows/``.
        params_path: the settings file every run reads.
        settings: its ``orchestration`` section.
        prefect_home: Prefect's folder for the database and logs (default ``<root>/.prefect``).
        port: overrides ``settings.port``; 0 picks a free port.
        extra_env: more environment variables for the server and workers, e.g. service intervals.
    """

    def __init__(self, root: Path, params_path: Path, settings: Orchestration, *, prefect_home: Path | None = None,
                 port: int | None = None, extra_env: dict[str, str] | None = None):
        self.root = Path(root).resolve()
        self.params_path = Path(params_path).resolve()
        self.settings = settings
        self.prefect_home = Path(prefect_home or self.root / ".prefect").resolve()
        self.state_path = self.prefect_home / STATE_FILE
        self.logs = self.prefect_home / "logs"
        self.port = settings.port if port is None else port
        self.extra_env = dict(extra_env or {})

    def environment(self, api_url: str) -> dict[str, str]:
        """Return the environment of the server, the workers and the deploy script."""
        return {
            **os.environ,
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "GX_ANALYTICS_ENABLED": "false",
            "DVC_NO_ANALYTICS": "1",
            "PREFECT_WORKER_QUERY_SECONDS": f"{self.settings.worker_poll_s:g}",
            "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": f"{self.settings.slot_retry_max_s:g}",
            **self.extra_env,
        }

    def _start(self, role: str, command: list[str], env: dict[str, str], pool: str | None = None) -> Process:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{role}.log"
        with open(log, "ab") as stream:
            child = subprocess.Popen(command, cwd=self.root, env=env, stdout=stream, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logger.info("Started %s (pid %d); log in %s", role, child.pid, log)
        return Process(role, child.pid, str(log), pool, start_time(child.pid))

    def up(self) -> StackState:
        """Start the server, register pools, limits and deployments, start the workers.

        A state file whose server no longer runs is stale: its processes that still run are
        stopped first.

        Raises:
            OrchestrationError: a stack of this folder is already running, the port is in use,
                the server failed its health check within ``server_start_timeout_s`` or exited
                while another server responded to it, or the deploy script failed. Whatever was
                started is stopped again.
        """
        if self.state_path.exists():
            state = StackState.read(self.state_path)
            if state.server.is_running():
                raise OrchestrationError(
                    f"A Prefect server of this project already runs (pid {state.server.pid}, {state.ui_url}); "
                    "stop it with `mycelium orchestrate down` first.")
            # The server died but workers may still run: stop them so they are not left orphaned.
            stopped = self.down()
            logger.warning("The Prefect server in %s is not running; stopped the rest of that stack: %s",
                           self.state_path, ", ".join(stopped) or "nothing was running")
        if self.port and port_in_use(self.settings.host, self.port):
            raise OrchestrationError(
                f"Port {self.port} on {self.settings.host} is already in use, maybe by another Prefect server; "
                "pass `--port 0` for a free port or another port, or change orchestration.port.")
        port = self.port or free_port(self.settings.host)
        api_url = f"http://{self.settings.host}:{port}/api"
        env = self.environment(api_url)
        server = self._start("server", [sys.executable, "-m", "prefect", "server", "start", "--host",
                                        self.settings.host, "--port", str(port)], env)
        state = StackState(api_url, f"http://{self.settings.host}:{port}", str(self.prefect_home),
                           str(self.params_path), server)
        self._write(state)
        try:
            self._wait_healthy(state)
            state.deployments = self._deploy(env)
            for pool, count in ((self.settings.training_pool, self.settings.training_workers),
                                (self.settings.light_pool, self.settings.light_workers)):
                for index in range(1, count + 1):
                    state.workers.append(self.start_worker(state, pool, f"{pool}-{index}"))
                    self._write(state)
        except BaseException:
            self.down()
            raise
        return state

    def start_worker(self, state: StackState, pool: str, name: str) -> Process:
        """Start one process worker of ``pool``; its flow runs see ``MYCELIUM_WORKER_NAME=name``."""
        env = {**self.environment(state.api_url), "MYCELIUM_WORKER_NAME": name}
        command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
                   "--name", name, "--limit", str(self.settings.runs_per_worker)]
        return self._start(name, command, env, pool)

    def _wait_healthy(self, state: StackState) -> None:
        deadline = time.monotonic() + self.settings.server_start_timeout_s
        while time.monotonic() < deadline:
            if _healthy(state.api_url):
                self._check_server_alive(state)
                return
            if not is_alive(state.server.pid):
                raise OrchestrationError(f"The Prefect server exited during start; its log {state.server.log} "
                                         f"ends with:\n{_tail(Path(state.server.log))}")
            time.sleep(0.5)
        raise OrchestrationError(
            f"The Prefect server at {state.api_url} was not healthy after {self.settings.server_start_timeout_s:g} s "
            f"(orchestration.server_start_timeout_s); see {state.server.log}.")

    def _check_server_alive(self, state: StackState) -> None:
        """Raise when our server exited although the health check passed.

        Then another server on the same port responded to the health check, and registering
        deployments would change that server.
        """
        # NOTE: a server that fails to bind after this check is not caught here; the port
        # test in ``up`` is the main guard.
        time.sleep(1.0)
        if not is_alive(state.server.pid):
            raise OrchestrationError(
                f"The Prefect server exited, but {state.api_url} responded to the health check, so another server "
                f"uses that port; pass `--port 0` or another port. {state.server.log} ends with:\n"
                f"{_tail(Path(state.server.log))}")

    def _deploy(self, env: dict[str, str]) -> dict[str, str]:
        log = self.logs / "deploy.log"
        output = self.logs / "deployments.json"
        done = subprocess.run([sys.executable, "flows/deploy.py", str(self.params_path), "--output", str(output)],
                              cwd=self.root, env=env, capture_output=True, text=True)
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise OrchestrationError(f"Registering the deployments failed (exit {done.returncode}); {log} ends "
                                     f"with:\n{_tail(log)}")
        return json.loads(output.read_text())["deployments"]

    def _write(self, state: StackState) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(state), indent=1))
        temporary.replace(self.state_path)

    def down(self) -> list[str]:
        """Stop the workers, mark their unfinished runs Crashed, stop the server; return what was stopped.

        Nothing running is fine. A recorded pid that now belongs to another process is left alone.
        """
        if not self.state_path.exists():
            return []
        state = StackState.read(self.state_path)
        stopped = [f"{p.role} (pid {p.pid})" for p in state.workers if stop_process(p.pid, started=p.started)]
        if state.server.is_running() and state.deployments:
            crash_unfinished_runs(state.api_url, list(state.deployments.values()))
        if stop_process(state.server.pid, started=state.server.started):
            stopped.append(f"server (pid {state.server.pid})")
        self.state_path.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, object]:
        """Return the state file's content with each process marked alive or not."""
        if not self.state_path.exists():
            return {"running": False}
        state = StackState.read(self.state_path)
        processes = [state.server, *state.workers]
        return {"running": state.server.is_running(), "api_url": state.api_url, "ui_url": state.ui_url,
                "healthy": _healthy(state.api_url),
                "processes": [{**asdict(p), "alive": p.is_running()} for p in processes]}


def crash_unfinished_runs(api_url: str, deployment_ids: list[str]) -> int:
    """Mark the Running and Pending flow runs of ``deployment_ids`` as Crashed; return how many.

    ``down`` calls this after it stopped the workers, whose flow runs then no longer run but
    would stay Running in the server's database. A server that cannot be reached is logged
    and skipped, so ``down`` still stops it.
    """
    import httpx
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    run_filter = FlowRunFilter(state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])))
    deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids))
    marked: set[str] = set()
    try:
        with SyncPrefectClient(api_url) as client:
            # Each pass reads the runs that are still unfinished, so no offset is needed. A run
            # read again did not change state, and then the loop stops instead of repeating.
            while runs := client.read_flow_runs(flow_run_filter=run_filter, deployment_filter=deployment_filter,
                                                limit=200):
                if any(str(run.id) in marked for run in runs):
                    logger.warning("Flow runs on %s stayed unfinished after being marked Crashed.", api_url)
                    break
                for run in runs:
                    client.set_flow_run_state(
                        run.id, Crashed(message="`mycelium orchestrate down` stopped its worker."), force=True)
                    marked.add(str(run.id))
    except httpx.HTTPError as error:
        logger.warning("Could not mark the unfinished flow runs on %s as Crashed (%d marked): %s",
                       api_url, len(marked), error)
        return len(marked)
    level = logging.WARNING if marked else logging.INFO
    logger.log(level, "Marked %d unfinished flow run(s) on %s as Crashed because their workers were stopped.",
               len(marked), api_url)
    return len(marked)


def stop_process(pid: int, timeout_s: float = STOP_TIMEOUT_S, *, started: int | None = None) -> bool:
    """Send SIGTERM to the session that ``pid`` leads, then SIGKILL after ``timeout_s``.

    ``started`` is the start time recorded when the process was started. When the pid now has
    another start time, it belongs to a new process, which is left alone. Returns False when
    the process was not running or the pid was reused.
    """
    if not is_alive(pid):
        return False
    if started is not None and start_time(pid) not in (None, started):
        logger.warning("Pid %d now belongs to another process (start time %s, recorded %d); not stopping it.",
                       pid, start_time(pid), started)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(pid):
            _reap(pid)
            return True
        _reap(pid)
        time.sleep(0.2)
    logger.warning("Process group %d did not stop within %g s of SIGTERM; sending SIGKILL.", pid, timeout_s)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if this process started it, so it leaves no zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
