"""The hour a Unix time falls in (floor(t / 3600)), as SQL that SQLite and PostgreSQL both run.

PostgreSQL has FLOOR; SQLite has it only when built with its math functions, and a CAST to INTEGER
truncates there but rounds in PostgreSQL. So each dialect gets its own spelling: the times are
positive, and truncating a positive number is its floor.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

HOUR_SECONDS = 3600


class hour_of(FunctionElement[Any]):  # lower case, as SQLAlchemy names its own SQL functions
    """hour_of(column): the hour number of a Unix time column, for GROUP BY."""

    type = Float()
    name = "hour_of"
    inherit_cache = True


@compiles(hour_of)
def _floor(element: hour_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"FLOOR({compiler.process(element.clauses, **kw)} / {HOUR_SECONDS})"


@compiles(hour_of, "sqlite")
def _truncate(element: hour_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} / {HOUR_SECONDS} AS INTEGER)"
