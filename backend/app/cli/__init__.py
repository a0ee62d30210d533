"""Operator commands, run as `python -m app.cli.<command>` with the API's environment."""
