"""User schemas by purpose: what an admin sends, and what the API returns."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)

from app.core.roles import Role
from app.models.user import PROVINCE_LENGTH

FULL_NAME_LENGTH = 200

# PostgreSQL text cannot hold NUL: refuse it as bad input here instead of failing in the database.
NO_NUL = r"^[^\x00]*$"
FullName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=FULL_NAME_LENGTH, pattern=NO_NUL
    ),
]
Province = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=PROVINCE_LENGTH, pattern=NO_NUL
    ),
]
# Cognito and the unique index both compare emails case-insensitively; storing one spelling
# keeps lookups, the Cognito username and the index in agreement.
LowerCaseEmail = Annotated[EmailStr, AfterValidator(str.lower)]

PROVINCE_ONLY_FOR_OFFICERS = "responsible_province is only for the OFFICER role"
PROVINCE_REQUIRED_FOR_OFFICERS = "responsible_province is required for the OFFICER role"


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    full_name: FullName
    email: LowerCaseEmail
    role: Role
    responsible_province: Province | None = None

    @model_validator(mode="after")
    def _province_matches_role(self) -> Self:
        if self.role is Role.OFFICER and self.responsible_province is None:
            raise ValueError(PROVINCE_REQUIRED_FOR_OFFICERS)
        if self.role is not Role.OFFICER and self.responsible_province is not None:
            raise ValueError(PROVINCE_ONLY_FOR_OFFICERS)
        return self


class UserUpdate(BaseModel):
    """Only the fields sent are changed; the email is the sign-in name and cannot change."""

    model_config = ConfigDict(extra="forbid")

    full_name: FullName | None = None
    role: Role | None = None
    responsible_province: Province | None = None
    is_active: bool | None = None

    @model_validator(mode="after")
    def _no_nulls_for_required_fields(self) -> Self:
        # `null` only means something for the province (clear it); elsewhere it is a mistake.
        for name in ("full_name", "role", "is_active"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class UserResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    full_name: str
    email: str | None
    role: Role
    responsible_province: str | None
    is_active: bool
    created_at: datetime


class ManagedUserResponse(UserResponse):
    """A user as the admin endpoints return it: with whether Cognito has caught up yet."""

    directory_in_step: bool = Field(
        description="False while the user directory (Cognito) has yet to follow a change to "
        "the role or the active state. The API enforces the change at once either way; "
        "Cognito follows within seconds, or within a minute of coming back after an outage."
    )


class UserList(BaseModel):
    items: list[UserResponse]
    total: int = Field(description="Users matching the filters, over all pages")
    page: int
    page_size: int


class PasswordResetOutcome(StrEnum):
    RESET = "reset"  # Cognito emailed a reset code
    INVITATION_RESENT = "invitation_resent"  # never signed in: a new temporary password


class PasswordResetResponse(BaseModel):
    outcome: PasswordResetOutcome


class UserSort(StrEnum):
    """Orders the user list may take; a leading `-` means descending."""

    CREATED_AT_DESC = "-created_at"
    CREATED_AT = "created_at"
    FULL_NAME = "full_name"
    FULL_NAME_DESC = "-full_name"
    EMAIL = "email"
    EMAIL_DESC = "-email"


MAX_PAGE = 1_000_000
SEARCH_LENGTH = 100


class UserListParams(BaseModel):
    """Query parameters of the user list; unknown parameters are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    page: int = Field(1, ge=1, le=MAX_PAGE)
    page_size: int = Field(20, ge=1, le=100)
    role: Role | None = None
    is_active: bool | None = None
    province: Province | None = None
    q: Annotated[
        str | None,
        StringConstraints(
            strip_whitespace=True, min_length=1, max_length=SEARCH_LENGTH, pattern=NO_NUL
        ),
        Field(description="Case-insensitive substring of the name or the email"),
    ] = None
    sort: UserSort = UserSort.CREATED_AT_DESC
