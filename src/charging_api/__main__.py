"""``python -m charging_api`` is the ``charging-api`` console script."""

from charging_api.cli import main

raise SystemExit(main())
