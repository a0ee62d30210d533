"""Typed access to what the lifespan built: the one place that reads `request.state`.

The lifespan (`app.main`) yields a `State` TypedDict; Starlette hands a shallow copy of it to
every request. Each item that code below the routers needs is named once, as a `LifespanItem`
with its type, and reaches routes through an `Annotated` alias built on it, e.g.
`ReadSessionsDep = Annotated[ReadSessions, Depends(READ_SESSIONMAKER)]`. Dependencies that need an
item inside their own body (authentication, which must stay one dependency per request) call
`ITEM.of(request)`. A test checks that every item names a key the lifespan yields, with the
type the lifespan declares for it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from fastapi import Request

T = TypeVar("T")


class LifespanItem(Generic[T]):
    """One entry of the lifespan state, and the FastAPI dependency that reads it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def of(self, request: Request) -> T:
        # The dict behind `request.state`, read directly: `request.state` wraps it in a new
        # object for each Request instance, and every middleware and route builds its own.
        value: T = request.scope["state"][self.name]
        return value

    # `async`: FastAPI would run a plain callable in a worker thread.
    async def __call__(self, request: Request) -> T:
        return self.of(request)

    def __repr__(self) -> str:
        return f"LifespanItem({self.name!r})"
