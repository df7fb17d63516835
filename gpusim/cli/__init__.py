"""The ``gpusim`` command line: ``variants``, ``fork``, ``scenarios``, ``bench``, ``sweep``, ``plot``, ``export``,
``calibrate``, ``validate`` and ``capture``.

Bad input (an unknown variant, a malformed layout, oracle or injection) prints one line to stderr and exits 2,
with no traceback. A simulated fork exits 0 whatever its outcome (ok, enomem or oops). Each command imports the
modules it runs inside its own function, so that starting the command line does not load every job's
dependencies (start-up time).
"""

import sys

from gpusim.cli.app import app, err

# Each module registers its commands with the app as it loads; `gpusim --help` lists them in this order.
# isort: off
from gpusim.cli import fork, bench, results, host  # noqa: F401
# isort: on


def main() -> None:
    """The command line; a usage error (an option's value, an unknown option) is one line naming it, exit 2."""
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # the command-line library's own errors (typer vendors click): matched by their shape
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # the help is printed already
            sys.exit(2)
        err.print(f"gpusim: error: {' '.join(e.format_message().split())}", markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    if type(code).__name__ == "Abort":
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
