"""Text fields every domain shares: `Annotated[str, Text(N)]`, and the province.

`Text(max_length)` is required text: at most `max_length` characters as sent, not blank, no NUL;
surrounding whitespace is removed. The limits apply to the text as sent, so the JSON Schema's
`maxLength` and `pattern` say exactly what is accepted (stripping first would accept longer text
than the schema allows), and a client or a generated test knows the rule before the server
answers 422.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import AfterValidator, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from app.core.scope import normalise_province
from app.models.user import PROVINCE_LENGTH

# The whitespace stripped from text: Unicode White_Space, which pydantic's `strip_whitespace`
# removed before, so what is stored does not change. Spelled out, because JSON Schema patterns
# are ECMA-262 regexes whose `\s` is a different set; `\uXXXX` reads the same in Python's `re`,
# ECMA-262 and the Rust regex engine.
_WHITESPACE_CODES: Final = (
    *range(0x09, 0x0E),
    0x20,
    0x85,
    0xA0,
    0x1680,
    *range(0x2000, 0x200B),
    0x2028,
    0x2029,
    0x202F,
    0x205F,
    0x3000,
)
WHITESPACE: Final = "".join(map(chr, _WHITESPACE_CODES))
# Something besides whitespace, and no NUL anywhere (PostgreSQL text cannot hold NUL).
TEXT_PATTERN: Final = (
    r"^[^\u0000]*[^\u0000"
    + "".join(f"\\u{code:04x}" for code in _WHITESPACE_CODES)
    + r"][^\u0000]*$"
)
_TEXT = re.compile(TEXT_PATTERN)


def stripped_text(value: str) -> str:
    """`value` without surrounding whitespace; refused when blank or holding a NUL."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if not _TEXT.match(value):
        raise ValueError("should have at least 1 character other than whitespace")
    return value.strip(WHITESPACE)


@dataclass(frozen=True, slots=True)
class Text:
    """Required text of at most `max_length` characters: `Annotated[str, Text(200)]`."""

    max_length: int

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            stripped_text, core_schema.str_schema(min_length=1, max_length=self.max_length)
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            "minLength": 1,
            "maxLength": self.max_length,
            "pattern": TEXT_PATTERN,
        }


# Stored and compared in one spelling (`app.core.scope.normalise_province`).
Province = Annotated[str, Text(PROVINCE_LENGTH), AfterValidator(normalise_province)]
SEARCH_LENGTH: Final = 100
SearchText = Annotated[str, Text(SEARCH_LENGTH)]
