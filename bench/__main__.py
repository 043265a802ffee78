"""Entry point: ``python -m bench [--quick] [--only ingest,fanout,connections,command]``."""

from bench.cli import main

raise SystemExit(main())
