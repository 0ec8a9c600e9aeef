"""Alembic migrations for the radnode database."""
