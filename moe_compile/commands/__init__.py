"""What each CLI command does; `cli.py` declares the command line and dispatches here."""
