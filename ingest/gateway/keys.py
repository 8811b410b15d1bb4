"""API keys: where they come from, what makes one acceptable, and revoking them live.

Keys come either from ``PLAYLEDGER_API_KEYS`` (comma-separated, fixed for the life of
the process) or from a key file named by ``PLAYLEDGER_API_KEYS_FILE``: one key per
line, blank lines and lines starting with ``#`` ignored. Keys in a file can be added or
revoked without a restart: ``ApiKeyStore`` re-reads the file on SIGHUP and whenever its
modification time, size or inode changes. A file that no longer yields a valid set of
keys (missing, empty, a placeholder, a short key) is refused: the previous keys stay in
force and the refusal is logged, so a half-saved edit never locks every client out.

Keys are never logged. A key's ``key_id`` (the first 12 hex digits of its SHA-256) names
it in logs and in the rate limiter instead; ``printf %s KEY | sha256sum | cut -c1-12``
computes it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "API_KEYS_ENV",
    "API_KEYS_FILE_ENV",
    "MIN_API_KEY_CHARS",
    "ApiKeyStore",
    "KeyFileState",
    "check_api_keys",
    "key_id",
    "parse_api_keys",
    "read_api_keys_file",
]

logger = logging.getLogger(__name__)

API_KEYS_ENV = "PLAYLEDGER_API_KEYS"
API_KEYS_FILE_ENV = "PLAYLEDGER_API_KEYS_FILE"
MIN_API_KEY_CHARS = 8

# Values people paste from templates and docs; none of them is a secret.
_PLACEHOLDER_KEYS = frozenset(
    {"changeme", "change-me", "changethis", "secret", "secretkey", "secret-key", "password", "apikey"}
    | {"api-key", "api_key", "your-api-key", "your_api_key", "placeholder", "example", "default", "token"}
)
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: header-safe


def parse_api_keys(raw: str) -> frozenset[str]:
    """Keys from a comma-separated list, blanks stripped and empty entries dropped."""
    return frozenset(key.strip() for key in raw.split(",") if key.strip())


def read_api_keys_file(path: Path) -> frozenset[str]:
    """Keys from a key file: one per line; blank lines and ``#`` comment lines ignored.

    Raises ``ValueError`` (never naming a key) when the file cannot be read.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the API key file {path}: {error}") from None
    keys = set()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keys.add(stripped)
    return frozenset(keys)


def key_id(key: str) -> str:
    """A short, non-secret name for a key: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def _key_problem(key: str) -> str | None:
    if not _KEY_CHARS.fullmatch(key):
        return "must be printable ASCII without spaces"
    if key.lower() in _PLACEHOLDER_KEYS or (key.startswith("<") and key.endswith(">")) or len(set(key)) == 1:
        return "is a placeholder, not a secret"
    if len(key) < MIN_API_KEY_CHARS:
        return f"is shorter than {MIN_API_KEY_CHARS} characters"
    return None


def check_api_keys(keys: Iterable[str], source: str) -> None:
    """Raise ``ValueError`` saying what to fix unless ``keys`` is a usable set of API keys.

    ``source`` names where the keys came from (an environment variable or a file) for
    the message. A key is never echoed: it may be a real one with a typo.
    """
    ordered = sorted(keys)
    if not ordered:
        raise ValueError(f"no API keys in {source}")
    for index, key in enumerate(ordered):
        problem = _key_problem(key)
        if problem is not None:
            raise ValueError(f"API key #{index + 1} in {source} {problem}")


@dataclass(frozen=True)
class KeyFileState:
    """What identifies one version of a key file on disk, to notice a change by polling."""

    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> KeyFileState | None:
        """The file's current state, or ``None`` if it cannot be stat'ed."""
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return cls(stat.st_mtime_ns, stat.st_size, stat.st_ino)


class ApiKeyStore:
    """The API keys in force, checked in constant time, reloadable from a key file.

    ``on_change(count)`` is called with the number of keys after every successful load;
    ``on_reload(outcome)`` with ``"applied"``, ``"unchanged"`` or ``"refused"`` after every
    reload attempt (for metrics).
    """

    def __init__(
        self,
        keys: frozenset[str],
        key_file: Path | None = None,
        on_change: Callable[[int], None] | None = None,
        on_reload: Callable[[str], None] | None = None,
    ) -> None:
        self.key_file = key_file
        self._on_change = on_change
        self._on_reload = on_reload
        self._file_state = KeyFileState.of(key_file) if key_file is not None else None
        self._entries: tuple[tuple[bytes, str], ...] = ()
        self._install(keys)

    def _install(self, keys: frozenset[str]) -> None:
        self._entries = tuple((key.encode("ascii"), key_id(key)) for key in sorted(keys))
        if self._on_change is not None:
            self._on_change(len(self._entries))

    @property
    def key_ids(self) -> frozenset[str]:
        """The ``key_id`` of every key in force."""
        return frozenset(identifier for _, identifier in self._entries)

    def authenticate(self, presented: bytes) -> str | None:
        """The ``key_id`` of the key ``presented`` matches, or ``None``.

        Every key is compared, whatever matched, so the time taken says nothing about
        which key (or how much of one) was right.
        """
        matched: str | None = None
        for key, identifier in self._entries:
            if hmac.compare_digest(presented, key):
                matched = identifier
        return matched

    def reload(self, reason: str) -> bool:
        """Re-read the key file; keep the current keys if it is not a valid set. True if applied."""
        if self.key_file is None:
            logger.info("API key reload (%s) ignored: keys come from %s, not a file", reason, API_KEYS_ENV)
            return False
        self._file_state = KeyFileState.of(self.key_file)
        try:
            keys = read_api_keys_file(self.key_file)
            check_api_keys(keys, f"the key file {self.key_file}")
        except ValueError as error:
            logger.error("API keys not reloaded (%s), the previous keys stay in force: %s", reason, error)
            self._report("refused")
            return False
        before = self.key_ids
        self._install(keys)
        after = self.key_ids
        if before == after:
            self._report("unchanged")
            return True
        logger.info(
            "API keys reloaded (%s): %d in force, added %s, revoked %s",
            reason,
            len(after),
            sorted(after - before) or "none",
            sorted(before - after) or "none",
        )
        self._report("applied")
        return True

    def reload_if_changed(self) -> bool:
        """Reload when the key file's mtime, size or inode changed since the last look."""
        if self.key_file is None:
            return False
        state = KeyFileState.of(self.key_file)
        if state == self._file_state:
            return False
        return self.reload("the key file changed")

    def _report(self, outcome: str) -> None:
        if self._on_reload is not None:
            self._on_reload(outcome)
