"""Dependency aliases for what the lifespan built above the toolkit (services' objects).

The toolkit's own items have theirs beside them (`SessionDep`, `ReadSessionsDep` and
`HealthEngineDep` in `app.core.db`); `app.main.State` lists every item, and `app.core.state`
explains the scheme.
"""

from typing import Annotated, Final

from fastapi import Depends, Request

from app.core.config import Settings
from app.core.db import READ_SESSIONMAKER
from app.core.state import LifespanItem
from app.services.cognito import CognitoUserPool
from app.services.directory_sync import DirectoryRecorder
from app.services.reference import ReferenceCache, ReferenceReads
from app.services.user_cache import UserCountCache, UserPageCache
from app.services.user_list import UserListReads

SETTINGS: Final = LifespanItem[Settings]("settings")
COGNITO: Final = LifespanItem[CognitoUserPool]("cognito")
REFERENCE_CACHE: Final = LifespanItem[ReferenceCache]("reference_cache")
USER_COUNTS: Final = LifespanItem[UserCountCache]("user_counts")
USER_PAGES: Final = LifespanItem[UserPageCache]("user_pages")
DIRECTORY_SYNC: Final = LifespanItem[DirectoryRecorder]("directory_sync")


def reference_reads(request: Request) -> ReferenceReads:
    """What the reference lists read with. Called by their routes rather than resolved by
    `Depends`: FastAPI's cost is per dependency it resolves (about 8 µs), a tenth of a cached
    list's (docs/performance.md), and this one needs nothing but the request."""
    return ReferenceReads(READ_SESSIONMAKER.of(request), REFERENCE_CACHE.of(request))


def user_list_reads(request: Request) -> UserListReads:
    """What the user list reads with; called by its route, as `reference_reads` is."""
    return UserListReads(
        READ_SESSIONMAKER.of(request), USER_COUNTS.of(request), USER_PAGES.of(request)
    )


SettingsDep = Annotated[Settings, Depends(SETTINGS)]
CognitoDep = Annotated[CognitoUserPool, Depends(COGNITO)]
DirectoryRecorderDep = Annotated[DirectoryRecorder, Depends(DIRECTORY_SYNC)]
