"""The page contract every list shares: `?page=&page_size=` in, `Page[Item]` out."""

from __future__ import annotations

from typing import Final, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

MAX_PAGE: Final = 1_000_000
MAX_PAGE_SIZE: Final = 100

ItemT = TypeVar("ItemT")


class PageParams(BaseModel):
    """Which page of a list; a list's own filters extend it. Unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")

    page: int = Field(1, ge=1, le=MAX_PAGE)
    page_size: int = Field(20, ge=1, le=MAX_PAGE_SIZE)


class Page(BaseModel, Generic[ItemT]):
    """One page of a list, and how many items match over all pages."""

    items: list[ItemT]
    total: int = Field(description="Items matching the filters, over all pages")
    page: int
    page_size: int
