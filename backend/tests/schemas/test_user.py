"""The user schemas say what the server accepts: a body valid by the JSON Schema is accepted, an
invalid one refused, on the fields where the schema can state the rule."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import TypeAdapter, ValidationError

from app.core.roles import Role
from app.schemas.text import TEXT_PATTERN, WHITESPACE
from app.schemas.user import (
    FULL_NAME_LENGTH,
    FullName,
    ManagedUserResponse,
    UserCreate,
    UserUpdate,
)

FULL_NAME = TypeAdapter(FullName)
# Short strings made mostly of whitespace, NUL and letters, so every branch is common.
TEXT = st.text(alphabet=st.sampled_from([*WHITESPACE, "\x00", "\x1c", "a", "é", "名"]), max_size=8)


def accepted(adapter: TypeAdapter[Any], value: object) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


@settings(max_examples=500, database=None, derandomize=True)
@given(st.one_of(TEXT, st.text(max_size=FULL_NAME_LENGTH + 5)))
def test_the_text_pattern_and_length_are_exactly_what_is_accepted(value: str) -> None:
    by_schema = re.fullmatch(TEXT_PATTERN, value) is not None and len(value) <= FULL_NAME_LENGTH
    assert accepted(FULL_NAME, value) == by_schema


@settings(max_examples=200, database=None, derandomize=True)
@given(TEXT)
def test_accepted_text_is_stored_without_surrounding_whitespace(value: str) -> None:
    assume(accepted(FULL_NAME, value))  # the refused ones: the test above
    assert FULL_NAME.validate_python(value) == value.strip(WHITESPACE) != ""


def schema_of(model: type[UserCreate] | type[UserUpdate]) -> dict[str, Any]:
    return model.model_json_schema()


def without_null(property_schema: dict[str, Any]) -> bool:
    text = str(property_schema)
    return "'null'" not in text and "default" not in property_schema


@pytest.mark.parametrize("field", ["full_name", "role", "is_active"])
def test_update_fields_may_be_left_out_but_are_never_null(field: str) -> None:
    schema = schema_of(UserUpdate)
    assert without_null(schema["properties"][field])
    assert field not in schema.get("required", [])

    with pytest.raises(ValidationError, match="cannot be null; leave the field out"):
        UserUpdate.model_validate({field: None})
    assert UserUpdate.model_validate({}).model_dump(exclude_unset=True) == {}


def test_a_null_province_clears_it() -> None:
    update = UserUpdate.model_validate({"responsible_province": None})
    assert update.model_dump(exclude_unset=True) == {"responsible_province": None}


CREATE_BODIES = [
    {"role": Role.OFFICER, "responsible_province": "Chiang Mai"},
    {"role": Role.OFFICER},
    {"role": Role.OFFICER, "responsible_province": None},
    {"role": Role.DISPATCHER},
    {"role": Role.DISPATCHER, "responsible_province": None},
    {"role": Role.DISPATCHER, "responsible_province": "Chiang Mai"},
    {"role": Role.ADMIN, "responsible_province": "Chiang Mai"},
]


@pytest.mark.parametrize("fields", CREATE_BODIES)
def test_the_create_schema_states_the_officer_province_rule(fields: dict[str, Any]) -> None:
    body = {"full_name": "Somchai Jaidee", "email": "somchai@example.gov", **fields}
    by_schema = Draft202012Validator(schema_of(UserCreate)).is_valid(body)
    assert accepted(TypeAdapter(UserCreate), body) == by_schema


UPDATE_BODIES = [
    {},
    {"responsible_province": "Chiang Mai"},  # decided by the stored role
    {"responsible_province": None},
    {"role": Role.OFFICER},  # decided by the stored province
    {"role": Role.OFFICER, "responsible_province": "Chiang Mai"},
    {"role": Role.OFFICER, "responsible_province": None},
    {"role": Role.EXECUTIVE},
    {"role": Role.EXECUTIVE, "responsible_province": None},
    {"role": Role.EXECUTIVE, "responsible_province": "Chiang Mai"},
]


@pytest.mark.parametrize("body", UPDATE_BODIES)
def test_the_update_schema_states_what_the_request_alone_decides(body: dict[str, Any]) -> None:
    by_schema = Draft202012Validator(schema_of(UserUpdate)).is_valid(body)
    assert accepted(TypeAdapter(UserUpdate), body) == by_schema


def test_the_email_limit_is_in_the_schema() -> None:
    assert schema_of(UserCreate)["properties"]["email"]["maxLength"] == 254
    local = "a" * 64
    too_long = f"{local}@{'b' * 60}.{'c' * 60}.{'d' * 60}.{'e' * 10}.gov"
    assert len(too_long) > 254
    body = {"full_name": "A", "email": too_long, "role": Role.ADMIN}
    assert not accepted(TypeAdapter(UserCreate), body)


def test_directory_in_step_says_that_false_is_not_an_error() -> None:
    field = ManagedUserResponse.model_json_schema()["properties"]["directory_in_step"]
    assert "`false` is not an error" in field["description"]
    assert "within a minute" in field["description"]
