"""Child processes of the demo, the live evaluation, the tests and benchmarks: start, stop, wait."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from streams.broker import EmbeddedBroker, free_port
from streams.config import Settings

__all__ = ["start_broker", "spawn_role", "stop_processes", "wait_until"]

#: How long the children get to stop after SIGTERM before they are killed (as ``streams.cli.SHUTDOWN_GRACE_S``).
STOP_GRACE_S = 15.0


def start_broker(settings: Settings, env: dict[str, str], workdir: Path) -> tuple[EmbeddedBroker | None, Settings]:
    """The embedded broker, started (its log in ``workdir``) unless ``TAILCAST_KAFKA`` names one, and the
    settings pointing at it; ``env`` (the children's) gets its address."""
    if not settings.kafka.embedded:
        return None, settings
    broker = EmbeddedBroker(port=free_port(), log_path=workdir / "broker.log").start()
    env["TAILCAST_KAFKA"] = broker.address
    return broker, replace(settings, kafka=replace(settings.kafka, bootstrap=broker.address))


def spawn_role(role: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``tailcast ROLE`` as a child process in its own session, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", "streams.cli", role], env=env, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop_processes(procs: Iterable[subprocess.Popen], *, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every process still running, wait up to ``grace_s`` seconds in all, then kill the rest."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_until(condition: Callable[[], object], *, timeout: float, interval: float = 0.1,
               message: str = "condition", error: type[Exception] = TimeoutError) -> object:
    """Poll ``condition`` until it returns a truthy value (returned); raise ``error`` naming ``message``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)
