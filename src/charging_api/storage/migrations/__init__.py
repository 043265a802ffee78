"""Alembic's environment and revisions for the store's schema (run by :mod:`..schema`)."""
