"""A dependency-free progress line for loops over batches (training epochs, simulation).

On a terminal it redraws one line in place (at most ~10 times a second) with a bar,
optional running stats (loss, accuracy), speed and time left. When the stream is not a
terminal (log files, CI, pipes) it draws nothing while running, and `close` writes one
line, so a log gets exactly one line per loop (per epoch in training).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

__all__ = ["ProgressBar"]

Stats = Mapping[str, float] | Callable[[], Mapping[str, float]]


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """Progress of one loop over ``total`` steps (``None`` when the length is unknown).

    Usage::

        bar = ProgressBar(len(loader), "epoch 3/10")
        for batch in loader:
            ...
            bar.update(1, stats=lambda: {"loss": running_loss(), "acc": running_acc()})
        bar.close("epoch 3/10  loss 0.912  acc 68.2%")

    ``stats`` may be a mapping or a zero-argument callable; a callable is only called
    when the line is redrawn, so costly stats (a GPU→CPU sync) are not computed per step.
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
    ):
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.live = enabled and callable(isatty) and bool(isatty())
        self.min_interval = min_interval
        self.n = 0
        self.start = time.perf_counter()
        self._last_draw = float("-inf")
        self._stats: Stats | None = None

    def update(self, n: int = 1, stats: Stats | None = None) -> None:
        """Advance by ``n`` steps; redraw if the last redraw is older than ``min_interval``."""
        self.n += n
        if stats is not None:
            self._stats = stats
        if self.live and time.perf_counter() - self._last_draw >= self.min_interval:
            self._draw()

    def close(self, summary: str | None = None) -> None:
        """End the loop: write ``summary`` (default: the final bar) as one finished line."""
        if not self.enabled:
            return
        if summary is None:
            summary = self._line()
        self._write(("\r" if self.live else "") + summary + ("\033[K" if self.live else "") + "\n")

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        parts = [self.desc] if self.desc else []
        if self.total:
            filled = int(20 * min(self.n / self.total, 1.0))
            parts.append(f"[{'#' * filled}{'.' * (20 - filled)}] {self.n}/{self.total}")
        else:
            parts.append(str(self.n))
        stats = self._stats() if callable(self._stats) else self._stats
        parts += [f"{k} {v:.4g}" for k, v in (stats or {}).items()]
        parts.append(f"{rate:.1f} it/s")
        if self.total and 0 < rate and self.n < self.total:
            parts.append(f"eta {_clock((self.total - self.n) / rate)}")
        else:
            parts.append(_clock(elapsed))
        return "  ".join(parts)

    def _draw(self) -> None:
        self._last_draw = time.perf_counter()
        self._write("\r" + self._line() + "\033[K")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
