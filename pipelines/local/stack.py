"""The local stack behind ``playledger up`` and ``playledger demo``.

Starts the Pub/Sub emulator (unless ``PUBSUB_EMULATOR_HOST`` names one), creates the
topic and subscriptions, then runs the gateway, the streaming pipeline, the archiver
and the CDN stub as child processes. ``stop()`` shuts down in the order that loses
nothing: the gateway first (no new events), the CDN stub (it holds no data), then the
archiver (it writes out and acknowledges what it holds), then the pipeline (it writes
out what it has read), then the emulator.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import IO, Annotated, ClassVar

import msgspec
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from ingest.cdn.settings import DEFAULT_CDN_PORT
from ingest.gateway.keys import read_api_keys_file
from ingest.gateway.settings import API_KEYS_ENV, API_KEYS_FILE_ENV, parse_api_keys
from ingest.processes import stop_process
from ingest.pubsub import EMULATOR_ENV, Emulator, ensure_topology, free_port
from schemas.settings import PositiveNumber, Settings
from schemas.topology import PubSubNames

__all__ = ["LocalStack", "StackError", "StackSettings"]

LOG = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A part of the local stack failed to start or died."""


_Port = msgspec.Meta(ge=0, le=65535, description="must be between 0 and 65535")


class StackSettings(Settings, frozen=True, kw_only=True):
    """What ``playledger up`` runs: where, on which port, and the pipeline's flags."""

    setting_kind: ClassVar[str] = "stack"

    data_dir: Path
    # 0: a free port, chosen once the emulator listens (so the two cannot collide).
    gateway_port: Annotated[int, _Port] = 8080
    cdn_port: Annotated[int, _Port] = DEFAULT_CDN_PORT
    pipeline_args: tuple[str, ...] = ()
    log_dir: Path | None = None  # None: children log to this process's stderr
    api_keys: Annotated[frozenset[str], msgspec.Meta(extra={"secret": True})] = frozenset()
    start_timeout_seconds: PositiveNumber = 60.0
    stop_timeout_seconds: PositiveNumber = 180.0


class LocalStack:
    """Emulator, gateway, streaming pipeline and archiver, started and stopped together."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.names = PubSubNames.from_env()
        self.data_dir = settings.data_dir.resolve()
        self.api_key = ""
        self._emulator: Emulator | None = None
        self._env = dict(os.environ)
        self._gateway: subprocess.Popen[bytes] | None = None
        self._pipeline: subprocess.Popen[bytes] | None = None
        self._archiver: subprocess.Popen[bytes] | None = None
        self._cdn: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self.gateway_port = settings.gateway_port
        self.cdn_port = settings.cdn_port

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self.cdn_port}"

    def start(self) -> LocalStack:
        """Start every part; return once the gateway and the CDN answer ``/healthz``."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._env.get(EMULATOR_ENV):
            self._emulator = Emulator().start()
            self._env[EMULATOR_ENV] = self._emulator.host
            LOG.info("Pub/Sub emulator on %s (pid %s)", self._emulator.host, self._emulator.pid)
        os.environ[EMULATOR_ENV] = self._env[EMULATOR_ENV]
        self.gateway_port = self.gateway_port or free_port()
        while not self.cdn_port or (self.cdn_port == self.gateway_port and not self.settings.cdn_port):
            self.cdn_port = free_port()
        ensure_topology(self.names)
        key_path = self._env.get(API_KEYS_FILE_ENV)
        if key_path and not self.settings.api_keys:
            # A key file stays the gateway's only source, so revoking a key in it works.
            keys = read_api_keys_file(Path(key_path))
        else:
            keys = self.settings.api_keys or parse_api_keys(self._env.get(API_KEYS_ENV, ""))
            if not keys:
                # A local key made for this run only; clients of `up` read it from the data dir.
                keys = frozenset({f"local-{secrets.token_urlsafe(18)}"})
            self._env.pop(API_KEYS_FILE_ENV, None)
            self._env[API_KEYS_ENV] = ",".join(sorted(keys))
        if not keys:
            raise StackError(f"no API key in {key_path}")
        self.api_key = sorted(keys)[0]
        key_file = self.data_dir / "local-api-key"
        key_file.write_text(self.api_key + "\n")
        key_file.chmod(0o600)
        self._pipeline = self._spawn(
            "pipeline",
            ["pipeline", "stream", "--data-dir", str(self.data_dir), *self.settings.pipeline_args],
        )
        self._archiver = self._spawn(
            "archiver", ["archive", "--data-dir", str(self.data_dir), "--subscription", self.names.archive]
        )
        self._cdn = self._spawn("cdn", ["cdn", "--port", str(self.cdn_port)])
        self._gateway = self._spawn(
            "gateway",
            ["gateway", "--port", str(self.gateway_port), "--data-dir", str(self.data_dir)],
        )
        try:
            for attempt in Retrying(
                stop=stop_after_delay(self.settings.start_timeout_seconds),
                wait=wait_fixed(0.2),
                retry=retry_if_exception_type(OSError),
                reraise=True,
            ):
                with attempt:
                    self.check()
                    for url in (self.gateway_url, self.cdn_url):
                        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                            response.read()
        except Exception as error:  # whatever went wrong, leave nothing running
            self.stop()
            raise StackError(f"the local stack did not start: {error!r}") from None
        LOG.info("gateway ready on %s", self.gateway_url)
        return self

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        output: IO[bytes] | None = None
        if self.settings.log_dir is not None:
            self.settings.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.settings.log_dir / f"{name}.log").open("ab")
            self._logs.append(output)
        # A session of its own: a Ctrl-C at the terminal reaches only this process,
        # which then stops the children in the order that loses nothing.
        return subprocess.Popen(
            [sys.executable, "-m", "pipelines.local.cli", *args],
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,
        )

    def check(self) -> None:
        """Raise ``StackError`` if the gateway, the pipeline, the archiver or the CDN has exited."""
        for name, process in self._children():
            if process is not None and process.poll() is not None:
                raise StackError(f"the {name} exited with status {process.returncode}{self._log_hint(name)}")

    def _children(self) -> list[tuple[str, subprocess.Popen[bytes] | None]]:
        """The child processes in the order that stops them without losing anything."""
        return [
            ("gateway", self._gateway),
            ("cdn", self._cdn),
            ("archiver", self._archiver),
            ("pipeline", self._pipeline),
        ]

    def _log_hint(self, name: str) -> str:
        if self.settings.log_dir is None:
            return ""
        path = self.settings.log_dir / f"{name}.log"
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").strip().splitlines()[-15:]
            return f" (see {path}):\n" + "\n".join(tail)
        return ""

    def stop(self) -> int:
        """Stop gateway, archiver, pipeline (each after it writes out), then emulator; worst exit status."""
        status = 0
        for name, process in self._children():
            if process is None:
                continue
            if process.poll() is None:
                LOG.info("stopping the %s", name)
            _, killed = stop_process(process, self.settings.stop_timeout_seconds)
            if killed:
                LOG.error("the %s did not stop in time: it was killed", name)
            if process.returncode not in (0, -signal.SIGTERM):
                LOG.error("the %s exited with status %s", name, process.returncode)
                status = max(status, 1)
        self._gateway = self._pipeline = self._archiver = self._cdn = None
        if self._emulator is not None:
            self._emulator.stop()
            self._emulator = None
            os.environ.pop(EMULATOR_ENV, None)
        for log in self._logs:
            log.close()
        self._logs.clear()
        return status

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
