"""``python -m stableserve`` runs the CLI."""

from stableserve.cli import app

app(prog_name="stableserve")
