"""Progress of long loops: a tqdm bar when asked for, and log lines with the rate's ETA.

One class for every loop that takes minutes (zoo builds, reference models, loading and fingerprinting
many checkpoints, aligning many pairs), so that each reports the same way::

    bar = Progress("from_zoo", len(ids), verb="loaded", logger=log)
    for i in ids:
        ...
        bar.update(1)
    bar.close()

logs ``from_zoo: loaded 40/100 models, 12s elapsed, ETA 18s`` at most every ``every`` seconds and once
at the end. Work found already done (a resumed build) is counted with ``update(n, resumed=True)``: it
moves the count, not the rate, so the ETA stays the time the remaining work will take.
"""

from __future__ import annotations

import logging
import time

_log = logging.getLogger("jaxlineage")


class Progress:
    """Counts ``total`` units of work and reports them.

    Args:
      what: the name that starts every line.
      total: the units expected (:meth:`add_total` changes it).
      unit: the units' name in lines (plural).
      verb: the word before the count (``"loaded"``, ``"aligned"``); none by default.
      bar: also show a tqdm bar (when tqdm is installed).
      every: the least number of seconds between two log lines (0: a line per update).
      logger: where lines go (the calling module's logger, so that its name stays in the records).
    """

    def __init__(
        self,
        what: str,
        total: int,
        *,
        unit: str = "models",
        verb: str = "",
        bar: bool = False,
        every: float = 10.0,
        logger: logging.Logger | None = None,
    ):
        self.what, self.total, self.unit, self.verb, self.every = what, int(total), unit, verb, float(every)
        self.log = logger or _log
        self.done = self.fresh = 0
        self.t0 = self.last = time.monotonic()
        self.tqdm = None
        if bar:
            try:
                from tqdm.auto import tqdm  # noqa: PLC0415 (optional)
            except ImportError:
                pass
            else:
                self.tqdm = tqdm(total=self.total, desc=what, unit=unit.rstrip("s") or unit)

    def add_total(self, n: int) -> None:
        """Changes the expected total by ``n`` (negative: less work than planned)."""
        self.total += int(n)
        if self.tqdm is not None:
            self.tqdm.total = self.total
            self.tqdm.refresh()

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate of the work done here (``None`` before any)."""
        left = max(self.total - self.done, 0)
        if left == 0:
            return 0.0
        if self.fresh == 0:
            return None
        return (time.monotonic() - self.t0) / self.fresh * left

    def update(self, n: int = 1, note: str = "", *, resumed: bool = False) -> None:
        """Counts ``n`` units (``resumed``: found done, not counted in the rate); ``note`` goes on the bar."""
        self.done += int(n)
        if not resumed:
            self.fresh += int(n)
        if self.tqdm is not None:
            self.tqdm.update(n)
            if note:
                self.tqdm.set_postfix_str(note)
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            eta = self.eta
            self.log.info(
                "%s: %s%d/%d %s%s, %.0fs elapsed, ETA %s",
                self.what,
                f"{self.verb} " if self.verb else "",
                self.done,
                self.total,
                self.unit,
                f" ({note})" if note else "",
                now - self.t0,
                "?" if eta is None else f"{eta:.0f}s",
            )

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
