"""``python -m gpusim.cli``: the ``gpusim`` command."""

from gpusim.cli import main

main()
