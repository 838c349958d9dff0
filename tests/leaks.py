"""The one leak guard: no session token, Tinybird JWT, secret key or admin token in any log
record, exception, repr, URL or error body.

:class:`LeakWatch` records every log record of every logger (at DEBUG) and the texts a test
hands over, and finds secrets in them: the secrets a test names (``watch.secret``), and — for
the suite-wide guard of ``conftest.py`` — every secret the package's fakes ever issued.
Reliability modules install one for their whole run (:func:`watch_for_leaks`) and report what
they scanned in pytest's summary.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from clerk_tinybird_middleware.testing._issued import find_issued

_RUN = re.compile(r"[A-Za-z0-9_-]{16,}")  # base64url runs: a JWT's signature is one
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def render_record(record: logging.LogRecord) -> str:
    """Everything a handler could write for ``record``: message, args, extras, traceback."""
    parts: list[str] = []
    try:
        parts.append(record.getMessage())
    except Exception:
        parts.append(str(record.msg))
    parts.append(repr(record.args))
    if record.exc_info and record.exc_info[1] is not None:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    for name in ("exc_text", "stack_info"):
        value = getattr(record, name, None)
        if value:
            parts.append(str(value))
    parts.extend(f"{k}={v!r}" for k, v in vars(record).items() if k not in _STANDARD)
    return "\n".join(parts)


class LeakWatch(logging.Handler):
    """Records every log record and the texts a test hands over; finds secrets in them.

    A JWT is found by its signature segment (any base64url run equal to it), so a token is
    caught wherever it is printed whole; other secrets are found as substrings.
    """

    def __init__(self, *, issued: bool = False, ignore: tuple[str, ...] = ()) -> None:
        super().__init__(logging.DEBUG)
        self.issued = issued  # also find what the fakes issued (tokens, keys), named or not
        self.ignore = ignore  # logger-name prefixes not scanned
        self.records: list[logging.LogRecord] = []
        self.texts: list[tuple[str, str]] = []
        self._signatures: dict[str, str] = {}
        self._plain: dict[str, str] = {}
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if self.ignore and record.name.startswith(self.ignore):
            return
        with self._lock:
            self.records.append(record)

    @property
    def secret_count(self) -> int:
        return len(self._signatures) + len(self._plain)

    def secret(self, value: str | None, label: str) -> None:
        """Watch for ``value`` (a JWT, or any other secret string)."""
        if not value:
            return
        parts = value.split(".")
        with self._lock:
            if len(parts) == 3 and len(parts[2]) >= 16:
                self._signatures.setdefault(parts[2], label)
            else:
                self._plain.setdefault(value, label)

    def text(self, where: str, value: object) -> None:
        """Scan ``value`` (``str(value)`` and ``repr(value)``) as produced by ``where``."""
        rendered = value if isinstance(value, str) else f"{value!s}\n{value!r}"
        with self._lock:
            self.texts.append((where, rendered))

    def find(self, text: str) -> list[str]:
        """Labels of the secrets that appear in ``text``."""
        found = [self._signatures[r] for r in _RUN.findall(text) if r in self._signatures]
        found.extend(label for secret, label in self._plain.items() if secret in text)
        if self.issued:
            found.extend(f"a secret ending …{secret[-6:]}" for secret in find_issued(text))
        return found

    def mark(self) -> tuple[int, int]:
        """A bookmark for :meth:`leaks`: what was recorded so far."""
        with self._lock:
            return len(self.records), len(self.texts)

    def leaks(self, since: tuple[int, int] = (0, 0)) -> list[str]:
        """Where each secret appears (a description per find), in what came after ``since``."""
        with self._lock:
            records = self.records[since[0] :]
            texts = self.texts[since[1] :]
        sources: Iterable[tuple[str, str]] = (
            *(
                (f"log {r.name}:{r.levelname} ({r.filename}:{r.lineno})", render_record(r))
                for r in records
            ),
            *texts,
        )
        return [
            f"{label} in {where}"
            for where, text in sources
            for label in sorted(set(self.find(text)))
        ]

    @contextmanager
    def installed(self) -> Iterator[LeakWatch]:
        """Every logger at DEBUG into this handler, for the duration."""
        root = logging.getLogger()
        old_level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        try:
            yield self
        finally:
            root.removeHandler(self)
            root.setLevel(old_level)


# -- the run's summary -------------------------------------------------------------------------

_SUMMARY = "clerk-tinybird-reliability-summary"


class Summary:
    """Lines printed in pytest's terminal summary, one section per title."""

    def __init__(self) -> None:
        self.sections: dict[str, list[str]] = {}

    def add(self, title: str, line: str) -> None:
        self.sections.setdefault(title, []).append(line)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for title, lines in self.sections.items():
            terminalreporter.write_sep("-", title)
            for line in lines:
                terminalreporter.write_line(line)


def summary(config: pytest.Config) -> Summary:
    """The run's :class:`Summary` (registered as a plugin on first use)."""
    plugin = config.pluginmanager.get_plugin(_SUMMARY)
    if plugin is None:
        plugin = Summary()
        config.pluginmanager.register(plugin, _SUMMARY)
    assert isinstance(plugin, Summary)
    return plugin


@contextmanager
def watch_for_leaks(request: pytest.FixtureRequest, name: str) -> Iterator[LeakWatch]:
    """A module's :class:`LeakWatch`: fails the module when a secret leaked, reports counts."""
    watch = LeakWatch()
    with watch.installed():
        yield watch
    leaks = watch.leaks()
    summary(request.config).add(
        "secrets: leak check (every logger at DEBUG)",
        f"{name}: {len(watch.records)} log records and {len(watch.texts)} texts scanned for "
        f"{watch.secret_count} secrets: {len(leaks)} leaks",
    )
    if leaks:
        pytest.fail(f"{len(leaks)} secret(s) leaked:\n" + "\n".join(sorted(set(leaks))[:50]))


# -- the summary under pytest-xdist ---------------------------------------------------------------

_RELAYED = "clerk_tinybird_summary"


class SummaryRelay:
    """pytest-xdist runs tests in worker processes: each worker hands its summary sections to
    the controller when it finishes (``workeroutput``), and the controller prints them all."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        output = getattr(self.config, "workeroutput", None)
        plugin = self.config.pluginmanager.get_plugin(_SUMMARY)
        if output is not None and isinstance(plugin, Summary):
            output[_RELAYED] = plugin.sections

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        sections = getattr(node, "workeroutput", {}).get(_RELAYED, {})
        collected = summary(self.config)
        for title, lines in sections.items():
            for line in lines:
                collected.add(title, line)
