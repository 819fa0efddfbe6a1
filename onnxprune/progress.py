"""What the command line shows while it works: the progress line and the collected warnings.

On a terminal one self-rewriting line on stderr shows the stage, its detail and the
elapsed time (:class:`Progress`); when stderr is not a terminal nothing is drawn, so a
log never fills with progress lines. Library warnings are collected by a logging
handler (:class:`Collect`) into the report and the summary instead of stderr, where
only the one error line of a failure ever goes.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import sys
import threading
import time
from typing import Any, Iterator

#: the program name the progress line (and the command line's messages) start with
PROG = "onnxprune"


class Progress:
    """One self-rewriting line on stderr while a run works: stage k/n, its detail, elapsed.

    Only on a terminal (never lines of it in a log). A background thread redraws it
    twice a second, so the clock moves during a long pass. Terminals that report no
    width get 80 columns (tqdm disables itself there, which is why no bar ever showed).
    """

    def __init__(self, steps: int, stream: Any = None, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else enabled
        self.steps = steps
        self.step = 0
        self.label = "starting"
        self.detail = ""
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

    def stage(self, label: str) -> None:
        with self._lock:
            self.step += 1
            self.label, self.detail = label, ""
        self._draw()

    def update(self, detail: str) -> None:
        with self._lock:
            self.detail = detail
        self._draw()

    def batches(self, done: int, total: int) -> None:
        self.update(f"{done}/{total} batches")

    @contextlib.contextmanager
    def relay(self) -> Iterator[None]:
        """While the data loads, stderr is a stand-in that turns the loader's tqdm bar
        into this line's detail ("450/1000 img"), so two bars never fight for the line."""
        if not self.enabled:
            yield
            return
        with contextlib.redirect_stderr(_Relay(self)):
            yield

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._draw()

    def line(self) -> str:
        with self._lock:
            elapsed = time.perf_counter() - self.t0
            text = f"{PROG} [{min(self.step, self.steps)}/{self.steps}] {self.label}"
            if self.detail:
                text += f" {self.detail}"
            done = min(self.step - 1, self.steps) / max(self.steps, 1)
        bar = "#" * int(done * 20)
        return f"{text}  |{bar.ljust(20)}| {elapsed:.1f}s"

    def _draw(self) -> None:
        if not self.enabled:
            return
        cols = shutil.get_terminal_size((80, 24)).columns or 80
        try:
            self.stream.write("\r\x1b[2K" + self.line()[: cols - 1])
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        if self.enabled:
            try:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        self.enabled = False


class _Relay(io.TextIOBase):
    """A terminal-looking stream that forwards the last 'n/total' a tqdm bar wrote."""

    _COUNT = re.compile(r"(\d+)/(\d+)")

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        found = self._COUNT.findall(text)
        if found:
            done, total = found[-1]
            self.progress.update(f"{done}/{total}")
        return len(text)

    def flush(self) -> None:
        pass


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Collect(logging.Handler):
    """Library warnings go to the report and the summary, not stderr (one line on error)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.name}: {' '.join(record.getMessage().split())}"
        except Exception:  # a bad format string must not break the run
            text = f"{record.name}: {record.msg}"
        if text not in self.messages:
            self.messages.append(text)


def collector() -> Collect | None:
    """The :class:`Collect` handler on the root logger (None when -v logs to stderr instead)."""
    for h in logging.getLogger().handlers:
        if isinstance(h, Collect):
            return h
    return None
