"""Declarative base, constraint naming convention and the two portable column types.

``UTCDateTime`` and ``Credits`` behave the same on SQLite and PostgreSQL: datetimes come back
timezone-aware in UTC, credit amounts come back as ``Decimal`` with exactly 6 decimals.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import DateTime, MetaData, Numeric
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator, TypeEngine

#: Deterministic constraint/index names, identical on every database (the migrations use them).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Credits carry 6 decimals (``Numeric(18, 6)``); this is one unit of the last place.
CREDIT_QUANTUM = Decimal("0.000001")


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def to_credits(value: Decimal | int | float | str) -> Decimal:
    """``value`` as a credits ``Decimal`` rounded half-even to 6 decimals.

    Floats go through ``str`` (``0.1`` -> ``Decimal("0.100000")``). Raises ``ValueError`` for
    anything that is not a finite number.
    """
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except ArithmeticError as exc:  # decimal.InvalidOperation
        raise ValueError(f"not a number: {value!r}") from exc
    if not dec.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return dec.quantize(CREDIT_QUANTUM, rounding=ROUND_HALF_EVEN)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always returns aware UTC datetimes.

    Binds must be timezone-aware (naive values raise ``ValueError``); SQLite stores them as
    naive UTC text, PostgreSQL as ``timestamptz``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Aware datetime -> UTC (naive UTC on SQLite). Raises ``ValueError`` for naive input."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use timezone-aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Stored value -> aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Credits(TypeDecorator[Decimal]):
    """``Numeric(18, 6)`` credit amounts as ``Decimal`` (6 decimals) on every database.

    PostgreSQL stores exact ``numeric``; SQLite has no decimal type and stores a float, so
    values are rounded back to 6 decimals on the way out (exact for |amount| < 1e9).
    """

    impl = Numeric(18, 6)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """``NUMERIC(18, 6)`` everywhere; on SQLite read as float and converted here."""
        if dialect.name == "sqlite":
            # asdecimal=False: we convert ourselves (and avoid SQLAlchemy's decimal warning).
            return dialect.type_descriptor(Numeric(18, 6, asdecimal=False))
        return dialect.type_descriptor(Numeric(18, 6))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        """Number -> 6-decimal ``Decimal`` (a float on SQLite). ``ValueError`` for non-numbers."""
        if value is None:
            return None
        dec = to_credits(value)
        return float(dec) if dialect.name == "sqlite" else dec

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        """Stored value -> ``Decimal`` with 6 decimals."""
        if value is None:
            return None
        return to_credits(repr(value) if isinstance(value, float) else value)


class Base(DeclarativeBase):
    """Declarative base of every stableserve table (metadata with ``NAMING_CONVENTION``)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
