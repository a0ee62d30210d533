"""The local admin of `make run` is a user the API itself could have created."""

from app.core.roles import Role
from app.schemas.user import UserCreate
from devtools.local_cognito import LOCAL_ADMIN_EMAIL


def test_the_local_admin_email_is_one_the_api_accepts_for_new_users() -> None:
    user = UserCreate(email=LOCAL_ADMIN_EMAIL, full_name="Local Admin", role=Role.ADMIN)

    assert user.email == LOCAL_ADMIN_EMAIL
