"""The servers measured beside ours: each one a script the harness runs as its own process."""
