"""The shared progress reporter: counts, throttling, and an ETA that ignores resumed work."""

import logging

import pytest

from jaxlineage import _progress


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(_progress.time, "monotonic", c)
    return c


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "test.progress"]


def test_eta_is_the_rate_of_fresh_work_times_what_is_left(clock, caplog):
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        bar = _progress.Progress("build", 10, verb="made", every=0.0, logger=log)
        bar.update(6, "saved earlier", resumed=True)  # found done: no time spent, no rate yet
        assert bar.eta is None
        clock.t += 8.0
        bar.update(2)  # 2 fresh models in 8 s: 4 s each, 2 left
        assert bar.eta == pytest.approx(8.0)
        clock.t += 8.0
        bar.update(2)
    assert _lines(caplog) == [
        "build: made 6/10 models (saved earlier), 0s elapsed, ETA ?",
        "build: made 8/10 models, 8s elapsed, ETA 8s",
        "build: made 10/10 models, 16s elapsed, ETA 0s",
    ]


def test_lines_are_throttled_but_the_last_is_always_logged(clock, caplog):
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        bar = _progress.Progress("align", 5, unit="pairs", every=10.0, logger=log)
        for _ in range(5):
            clock.t += 3.0
            bar.update(1)
    # Updates at 3, 6, 9, 12, 15 s: the first line when 10 s have passed (12 s), then the end.
    assert [line.split(",")[0] for line in _lines(caplog)] == ["align: 4/5 pairs", "align: 5/5 pairs"]


def test_add_total_moves_the_end(clock, caplog):
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        with _progress.Progress("zoo", 4, every=1e9, logger=log) as bar:
            bar.update(2)
            bar.add_total(-2)  # fewer models than planned (a top-k floor)
            bar.update(0)
    assert _lines(caplog) == ["zoo: 2/2 models, 0s elapsed, ETA 0s"]
