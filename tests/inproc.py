"""The command line run in this process (``gpusim.cli.main`` with its arguments and output redirected), for tests:
the same exit codes and output as the ``gpusim`` command, without starting an interpreter and loading numba for each
call. An exception that escapes the command fails the test, as a traceback would fail a user. A few tests still run
the real command in a subprocess (start-up, the entry point, kills)."""

import contextlib
import io
import subprocess
import sys
from unittest import mock

from gpusim import cli


def run_cli(*args: str) -> tuple[int, str, str]:
    """``gpusim ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "argv", ["gpusim", *map(str, args)]), contextlib.redirect_stdout(out):
        with contextlib.redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def gpusim(*args) -> subprocess.CompletedProcess:
    """:func:`run_cli` in the shape of ``subprocess.run``'s result (``returncode``, ``stdout``, ``stderr``)."""
    code, out, err = run_cli(*args)
    return subprocess.CompletedProcess(["gpusim", *map(str, args)], code, out, err)
