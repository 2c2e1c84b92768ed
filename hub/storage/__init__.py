"""Persistence: the PostgreSQL engine, schema migrations and repositories."""
