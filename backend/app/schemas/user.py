"""User schemas by purpose: what an admin sends, and what the API returns."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Self

import email_validator
from pydantic import (
    MISSING,
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic.json_schema import WithJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.core.roles import Role
from app.core.scope import province_problem
from app.schemas.page import Page, PageParams
from app.schemas.text import Province, SearchText, Text

FULL_NAME_LENGTH = 200
# RFC 5321's limit on a forward path, which Cognito and email-validator apply too.
EMAIL_LENGTH = 254

FullName = Annotated[str, Text(FULL_NAME_LENGTH)]


# Cognito and the unique index both compare emails case-insensitively; storing one spelling
# keeps lookups, the Cognito username and the index in agreement.
def _deliverable_email(value: str) -> str:
    """The address as Cognito stores and can email it: ASCII, the domain in its IDNA form.

    Cognito's invitations go out by email (its own sender or Amazon SES), and SES does not
    support SMTPUTF8, so a local part with non-ASCII characters could never receive one (and
    Cognito refuses it in words of its own); an internationalised domain is sent in its ASCII
    (`xn--`) form. Cognito and the unique index compare emails case-insensitively; one
    lower-case spelling keeps lookups, the Cognito username and the index in agreement.
    """
    try:
        checked = email_validator.validate_email(
            value, check_deliverability=False, allow_smtputf8=False
        )
    except email_validator.EmailNotValidError as error:
        raise ValueError(f"value is not a valid email address: {error}") from None
    return str(checked.ascii_email).lower()


LowerCaseEmail = Annotated[
    str,
    StringConstraints(max_length=EMAIL_LENGTH),
    AfterValidator(_deliverable_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": EMAIL_LENGTH}),
]

EMAIL_CANNOT_CHANGE = (
    "the email cannot change: it is the user's sign-in name (create a user for a new address)"
)


def _field_error(model: str, field: str, kind: str, message: str, value: object) -> ValidationError:
    """A validation error located at `field`, as a field's own validator would raise it."""
    return ValidationError.from_exception_data(
        model,
        [InitErrorDetails(type=PydanticCustomError(kind, message), loc=(field,), input=value)],
    )


def _check_province(model: str, role: Role, province: str | None) -> None:
    """The province rule (`app.core.scope`), reported at the province as the update's is."""
    problem = province_problem(role, province)
    if problem is not None:
        raise _field_error(model, "responsible_province", "value_error", problem, province)


_ROLE_IS_OFFICER: Final[JsonDict] = {
    "properties": {"role": {"const": Role.OFFICER.value}},
    "required": ["role"],
}
_PROVINCE_A_STRING_IF_GIVEN: Final[JsonDict] = {
    "properties": {"responsible_province": {"type": "string"}}
}
_PROVINCE_GIVEN: Final[JsonDict] = {
    "required": ["responsible_province"],
    **_PROVINCE_A_STRING_IF_GIVEN,
}
_PROVINCE_ABSENT_OR_NULL: Final[JsonDict] = {
    "properties": {"responsible_province": {"type": "null"}}
}


class UserCreate(BaseModel):
    # The OFFICER <-> province rule as JSON Schema (2020-12, which OpenAPI 3.1 uses), so
    # clients and generated tests know it before the server says 422.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": _ROLE_IS_OFFICER,
            "then": _PROVINCE_GIVEN,
            "else": _PROVINCE_ABSENT_OR_NULL,
        },
    )

    full_name: FullName
    email: LowerCaseEmail
    role: Role
    responsible_province: Province | None = Field(
        default=None,
        description="The province an OFFICER handles: required for OFFICER, "
        "absent or null for every other role.",
    )

    @model_validator(mode="after")
    def _province_matches_role(self) -> Self:
        _check_province(type(self).__name__, self.role, self.responsible_province)
        return self


class UserUpdate(BaseModel):
    """Only the fields sent are changed; the email is the sign-in name and cannot change."""

    # A field left out keeps its value; `null` is refused except for the province (clear it).
    # MISSING (not None) as the default keeps `null` out of the schema of the other fields.
    # What the province rule needs of the stored user (a role that stays OFFICER keeps its
    # province) cannot be stated here; what the request alone decides is.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": _ROLE_IS_OFFICER,
            "then": _PROVINCE_A_STRING_IF_GIVEN,
            "else": {"if": {"required": ["role"]}, "then": _PROVINCE_ABSENT_OR_NULL},
        },
    )

    full_name: FullName | MISSING = MISSING
    role: Role | MISSING = Field(
        default=MISSING,
        description="A new role. Leaving OFFICER drops the province; becoming OFFICER needs "
        "one, sent here or already stored.",
    )
    responsible_province: Province | MISSING | None = Field(
        default=MISSING,
        description="The province an OFFICER handles; null clears it. A user who is or "
        "becomes an OFFICER must keep one.",
    )
    # `true` or `false` only: the field that ends sessions takes no "no", 0 or "false".
    is_active: StrictBool | MISSING = MISSING

    @model_validator(mode="before")
    @classmethod
    def _email_cannot_change(cls, data: Any) -> Any:
        # Said as such, at the field: "Extra inputs are not permitted" read as a typo.
        if isinstance(data, dict) and "email" in data:
            raise _field_error(
                cls.__name__, "email", "email_immutable", EMAIL_CANNOT_CHANGE, data["email"]
            )
        return data

    @field_validator("full_name", "role", "is_active", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value

    @model_validator(mode="after")
    def _province_matches_a_new_role(self) -> Self:
        if self.role is not MISSING and self.responsible_province is not MISSING:
            _check_province(type(self).__name__, self.role, self.responsible_province)
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
    updated_at: datetime = Field(description="When the user's row last changed")


class ManagedUserResponse(UserResponse):
    """A user as the admin endpoints return it: with whether Cognito has caught up yet."""

    directory_in_step: bool = Field(
        description="Whether Cognito (the user directory) already reflects the user's role and "
        "active state. `false` is not an error: the change is saved and the API enforces it "
        "at once; Cognito follows on its own, within seconds, or within a minute of coming "
        "back after an outage, and a later GET of the user says `true`. A change of name or "
        "province does not involve Cognito and answers `true`."
    )


class UserList(Page[UserResponse]):
    total: int = Field(description="Users matching the filters, over all pages")


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


class UserListParams(PageParams):
    """Query parameters of the user list; unknown parameters are refused, not ignored."""

    role: Role | None = None
    is_active: bool | None = None
    province: Province | None = None
    q: SearchText | None = Field(
        None, description="Case-insensitive substring of the name or the email"
    )
    sort: UserSort = UserSort.CREATED_AT_DESC

    @field_validator("role", "is_active", "province", "q", mode="before")
    @classmethod
    def _empty_is_not_given(cls, value: object) -> object:
        # What an SPA's form sends for a filter left blank (`?q=`): no filter.
        return None if value == "" else value
