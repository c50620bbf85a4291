"""``python -m omnid``: the omnid command line."""

from .cli import main

main()
