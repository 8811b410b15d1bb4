"""Pub/Sub for playledger: the local emulator and the topic layout.

``Emulator`` starts the official emulator (``gcloud beta emulators pubsub start``) on a
free loopback port, waits until it answers and stops it by its process group. The CLI
and the test fixture use the same code. ``ensure_topology`` creates the contract's
topic and subscriptions idempotently, against the emulator or real Pub/Sub alike.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions as gexc
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from schemas.topology import PubSubNames

__all__ = [
    "EMULATOR_ENV",
    "Emulator",
    "EmulatorError",
    "emulator_from_env_or_started",
    "ensure_topology",
    "free_port",
]

EMULATOR_ENV = "PUBSUB_EMULATOR_HOST"


class EmulatorError(RuntimeError):
    """The emulator could not be started or did not answer in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Emulator:
    """The Pub/Sub emulator as a child process group on ``127.0.0.1:port``."""

    def __init__(self, port: int | None = None, start_timeout_seconds: float = 60.0) -> None:
        if start_timeout_seconds <= 0:
            raise ValueError("start_timeout_seconds must be positive")
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._start_timeout_seconds = start_timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._data_dir: Path | None = None
        self._log: Path | None = None

    def start(self) -> Emulator:
        """Start the emulator and return once it answers HTTP on its port."""
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise EmulatorError(
                "gcloud not found: install the Google Cloud CLI and its Pub/Sub emulator "
                "(see README, 'What the machine needs')"
            )
        self._data_dir = Path(tempfile.mkdtemp(prefix="playledger-pubsub-"))
        self._log = self._data_dir / "emulator.log"
        with self._log.open("wb") as log:
            # A session of its own, so stop() can end gcloud and the Java server it forks.
            self._process = subprocess.Popen(
                [
                    gcloud,
                    "beta",
                    "emulators",
                    "pubsub",
                    "start",
                    f"--host-port={self.host}",
                    f"--data-dir={self._data_dir}",
                    "--quiet",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            for attempt in Retrying(
                stop=stop_after_delay(self._start_timeout_seconds),
                wait=wait_fixed(0.25),
                retry=retry_if_exception_type(OSError),
                reraise=True,
            ):
                with attempt:
                    self._probe()
        except OSError as error:
            tail = self._log.read_text(errors="replace")[-2000:]
            self.stop()
            raise EmulatorError(f"Pub/Sub emulator did not answer on {self.host}: {error}\n{tail}") from None
        return self

    def _probe(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            log = self._log.read_text(errors="replace")[-2000:] if self._log else ""
            raise EmulatorError(f"Pub/Sub emulator exited with {self._process.returncode}:\n{log}")
        with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as response:
            response.read()

    def stop(self) -> None:
        """Stop the emulator's whole process group (SIGTERM, then SIGKILL) and clean up."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # gcloud may exit before its Java child: make sure nothing of the group is left.
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def emulator_from_env_or_started() -> Iterator[str]:
    """Yield the emulator's host: ``PUBSUB_EMULATOR_HOST`` if set, else a started one.

    While the block runs, ``PUBSUB_EMULATOR_HOST`` names the emulator, so every client
    made in this process (and its children) talks to it.
    """
    existing = os.environ.get(EMULATOR_ENV)
    if existing:
        yield existing
        return
    with Emulator() as emulator:
        os.environ[EMULATOR_ENV] = emulator.host
        try:
            yield emulator.host
        finally:
            os.environ.pop(EMULATOR_ENV, None)


def ensure_topology(names: PubSubNames, ack_deadline_seconds: int = 60) -> None:
    """Create the topic and both subscriptions unless they exist already."""
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        with contextlib.suppress(gexc.AlreadyExists):
            publisher.create_topic(request={"name": names.topic})
        for subscription in (names.royalties, names.archive):
            with contextlib.suppress(gexc.AlreadyExists):
                subscriber.create_subscription(
                    request={
                        "name": subscription,
                        "topic": names.topic,
                        "ack_deadline_seconds": ack_deadline_seconds,
                    }
                )
    finally:
        subscriber.close()
        publisher.transport.close()
