"""``python -m ee_middleware.cli``: the same as the ``ee`` script."""

from ee_middleware.cli import main

main()
