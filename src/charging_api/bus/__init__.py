"""Event buses: in-process (default) and, later, Redis for several processes."""
