"""``python -m pyops``."""

from pyops.cli import main

main()
