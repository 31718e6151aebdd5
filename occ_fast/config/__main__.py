"""``python -m occ_fast.config [flags]``: print the resolved configuration."""

from occ_fast.config.cli import main

main()
