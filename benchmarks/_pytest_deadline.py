"""A per-test deadline for pytest that needs no plugin package (benchmarks/gpu_check.sh loads it).

    PYTHONPATH=benchmarks SYNCFREE_TEST_DEADLINE_S=90 python -P -m pytest -p _pytest_deadline ...

Each test (setup, call and teardown) runs under faulthandler.dump_traceback_later(exit=True):
past the deadline a C watchdog thread prints every thread's Python stack to stderr and ends
the process with status 1. Unlike pytest-timeout's methods it needs neither a signal handler
to run (a test stuck in a CUDA synchronize never returns to the interpreter) nor the GIL, so it
stops a test hung anywhere. The whole run ends with the first hung test, as -x would; with
pytest -v the log's last test line names it (pytest prints a test's id before running it).
"""
import faulthandler
import os
import sys

import pytest

DEADLINE_S = float(os.environ.get("SYNCFREE_TEST_DEADLINE_S", "0") or 0)
_stderr_fd = None  # the real stderr: while a test runs, fd 2 is pytest's capture file


def pytest_configure(config):
    global _stderr_fd
    if DEADLINE_S > 0:  # capture is suspended here (as for pytest's own faulthandler plugin)
        _stderr_fd = os.dup(sys.__stderr__.fileno())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _stderr_fd is None:
        yield
        return
    faulthandler.dump_traceback_later(DEADLINE_S, exit=True, file=_stderr_fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def pytest_report_header(config):
    if DEADLINE_S > 0:
        return f"per-test deadline: {DEADLINE_S:g} s (benchmarks/_pytest_deadline.py: stacks dumped, then exit 1)"
    return None
