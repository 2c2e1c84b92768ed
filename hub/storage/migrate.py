"""Apply the schema migrations (``yijian db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command, op
from alembic.config import Config

from hub.storage.database import sqlalchemy_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database schema up to ``revision``. Safe to run repeatedly."""
    command.upgrade(alembic_config(database_url), revision)


def execute_script(script: str) -> None:
    """Run a migration's SQL script statement by statement (inside Alembic's transaction).

    Lines starting with ``--`` are comments; statements end with ``;``, so a function body
    in a script must not contain one.
    """
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    for statement in "\n".join(lines).split(";"):
        if statement.strip():
            op.execute(statement.strip())
