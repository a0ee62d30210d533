"""Dependency aliases for what the lifespan built above the toolkit (services' objects).

The toolkit's own items have theirs beside them (`SessionDep`, `ReadSessionsDep` and
`HealthEngineDep` in `app.core.db`); `app.main.State` lists every item, and `app.core.state`
explains the scheme.
"""

from typing import Annotated, Final

from fastapi import Depends

from app.core.config import Settings
from app.core.state import LifespanItem
from app.services.cognito import CognitoUserPool
from app.services.directory_sync import DirectorySync
from app.services.reference import ReferenceCache
from app.services.user_cache import UserCountCache

SETTINGS: Final = LifespanItem[Settings]("settings")
COGNITO: Final = LifespanItem[CognitoUserPool]("cognito")
REFERENCE_CACHE: Final = LifespanItem[ReferenceCache]("reference_cache")
USER_COUNTS: Final = LifespanItem[UserCountCache]("user_counts")
DIRECTORY_SYNC: Final = LifespanItem[DirectorySync]("directory_sync")

SettingsDep = Annotated[Settings, Depends(SETTINGS)]
CognitoDep = Annotated[CognitoUserPool, Depends(COGNITO)]
ReferenceCacheDep = Annotated[ReferenceCache, Depends(REFERENCE_CACHE)]
UserCountsDep = Annotated[UserCountCache, Depends(USER_COUNTS)]
DirectorySyncDep = Annotated[DirectorySync, Depends(DIRECTORY_SYNC)]
