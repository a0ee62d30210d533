"""Provinces, and who is limited to one: the one place the rule is stated.

- **Who has a province.** An OFFICER handles the cases of one responsible province, so an
  OFFICER must have one and every other role must not (`province_problem`; the database's
  `officer_has_province` check holds the same rule for whatever else writes the table).
- **Whose data is limited.** `ProvinceScope.of(principal)`: an OFFICER's to their province,
  every other role's to none. A list is filtered (`where`): another province's items are simply
  not in it, so a page with nothing in scope is an empty list, never a 403. A single item of
  another province is answered as missing (`check` raises NotFoundError): a 404 like an id that
  exists nowhere, so a caller cannot learn which ids exist elsewhere. A scoped caller without a
  province (the database forbids it) sees nothing: 403, never everything.
- **One spelling.** Provinces are compared as `normalise_province` writes them (Unicode NFC,
  each run of whitespace one space, none around), and input is stored that way, so a filter, a
  scope and a stored row agree without case or whitespace tricks in SQL.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import ColumnElement, true

from app.core.errors import ForbiddenError, NotFoundError
from app.core.principal import Principal
from app.core.roles import Role

# The roles whose data is limited to their responsible province, and who must have one.
SCOPED_ROLES: Final = frozenset({Role.OFFICER})

PROVINCE_REQUIRED = "responsible_province is required for the OFFICER role"
PROVINCE_NOT_ALLOWED = "responsible_province is only for the OFFICER role"

_WHITESPACE_RUN: Final = re.compile(r"\s+")


def normalise_province(name: str) -> str:
    """The one spelling provinces are stored and compared in."""
    return _WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFC", name)).strip()


def province_problem(role: Role, province: str | None) -> str | None:
    """What is wrong with this role holding this province, or None when nothing is."""
    if role in SCOPED_ROLES and province is None:
        return PROVINCE_REQUIRED
    if role not in SCOPED_ROLES and province is not None:
        return PROVINCE_NOT_ALLOWED
    return None


@dataclass(frozen=True, slots=True)
class ProvinceScope:
    """The province a caller's data is limited to; `province` None: every province."""

    province: str | None

    @classmethod
    def of(cls, principal: Principal) -> ProvinceScope:
        if principal.role not in SCOPED_ROLES:
            return cls(None)
        if principal.responsible_province is None:
            raise ForbiddenError("No province is assigned to this account")
        return cls(normalise_province(principal.responsible_province))

    def where(self, column: ColumnElement[Any] | Any) -> ColumnElement[bool]:
        """The condition a query adds to see only what is in scope."""
        return true() if self.province is None else column == self.province

    def covers(self, province: str | None) -> bool:
        return self.province is None or province == self.province

    def check(self, province: str | None, what: str = "item") -> None:
        """Refuse one item of another province as if it did not exist."""
        if not self.covers(province):
            raise NotFoundError(f"No such {what}")
