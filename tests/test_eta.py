"""The first estimate says when the CPU is contended (issue 44): an honest figure for that moment, with why."""

import os

from fastpggan import eta


def test_a_contended_cpu_is_said(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 2.0, 1.0))
    assert eta.cpu_contention() == (
        "the CPU is contended (load average 3.2 on 2 cores: other work shares them), so this estimate is longer "
        "than the run will take on a quiet machine"
    )
    monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 2.0, 1.0))
    assert eta.cpu_contention() is None


def test_no_load_average_is_no_claim(monkeypatch):
    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert eta.cpu_contention() is None
