"""`python -m phase1` runs the CLI."""

from phase1.cli import main

main()
