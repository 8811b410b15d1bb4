"""Stopping the child processes the stack, the benchmarks and the tests start."""

from __future__ import annotations

import contextlib
import signal
import subprocess

__all__ = ["stop_process"]


def stop_process(process: subprocess.Popen[bytes], timeout_seconds: float) -> tuple[int, bool]:
    """SIGTERM ``process`` and wait up to ``timeout_seconds``, then SIGKILL it.

    Returns ``(exit status, whether it had to be killed)``. A process that already
    exited is only reaped.
    """
    if process.poll() is not None:
        return process.returncode, False
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_seconds), False
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(), True
