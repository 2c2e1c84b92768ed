"""Alembic migrations of the hub's PostgreSQL schema (``yijian db upgrade``)."""
