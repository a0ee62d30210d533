"""The Cognito user pool adapter: its admin calls, what their failures mean, what users are.

- `pool`: `CognitoUserPool`, the admin calls the services make, each in a worker thread within
  the request's deadline;
- `errors`: the domain errors Cognito's failures become, and hints for an operator;
- `records`: `CognitoUser`, and what a user's email is to the pool (`UsernameMode`).
"""

from app.core.aws import single_attempt
from app.services.cognito.errors import (
    AnswerLostError,
    CognitoUserExistsError,
    DirectoryMisconfiguredError,
    DirectoryMismatchError,
    DirectoryTimeoutError,
    EmailTakenError,
    cognito_code,
    reporting_misconfiguration_myself,
)
from app.services.cognito.pool import MAX_PAGE_SIZE, CognitoUserPool
from app.services.cognito.records import (
    NEVER_SIGNED_IN_STATUS,
    ROLE_GROUPS,
    CognitoUser,
    UsernameMode,
)

__all__ = [
    "MAX_PAGE_SIZE",
    "NEVER_SIGNED_IN_STATUS",
    "ROLE_GROUPS",
    "AnswerLostError",
    "CognitoUser",
    "CognitoUserExistsError",
    "CognitoUserPool",
    "DirectoryMisconfiguredError",
    "DirectoryMismatchError",
    "DirectoryTimeoutError",
    "EmailTakenError",
    "UsernameMode",
    "cognito_code",
    "reporting_misconfiguration_myself",
    "single_attempt",
]
