"""The moto internals the emulator patches are still there, in the shape its patches take.

`devtools.cognito_emulator.PATCHES` replaces four of moto's methods, one of them private
(`CognitoIdpUserPool._get_user`). A moto release that renames one, or changes its parameters,
fails here by name instead of leaving the emulator silently unlike real Cognito.
"""

from __future__ import annotations

import inspect

import pytest
from moto.cognitoidp.models import CognitoIdpBackend
from moto.core import DEFAULT_ACCOUNT_ID

from devtools.cognito_emulator import PATCHES, fidelity_patches
from tests.support.jwt_tokens import TEST_REGION


@pytest.mark.parametrize(("owner", "name", "original", "replacement"), PATCHES)
def test_each_patched_method_exists_with_the_parameters_its_patch_takes(
    owner: type, name: str, original: object, replacement: object
) -> None:
    current = inspect.getattr_static(owner, name)
    assert callable(current), f"moto's {owner.__name__}.{name} is gone"
    assert current is original or current is replacement
    moto_parameters = list(inspect.signature(original).parameters)  # type: ignore[arg-type]
    assert moto_parameters == list(inspect.signature(replacement).parameters)  # type: ignore[arg-type]


def test_moto_finds_users_for_admin_calls_through_the_pools_get_user() -> None:
    """What makes the `_get_user` patch reach every admin call: AdminGetUser by a verified
    email alias finds the user only through it."""
    backend = CognitoIdpBackend(TEST_REGION, DEFAULT_ACCOUNT_ID)
    pool = backend.create_user_pool("aliases", {"AliasAttributes": ["email"]})
    attributes = [
        {"Name": "email", "Value": "alias@example.gov"},
        {"Name": "email_verified", "Value": "true"},
    ]
    backend.admin_create_user(pool.id, "user-1", "SUPPRESS", "Temp-Passw0rd!", attributes)
    with fidelity_patches():
        assert backend.admin_get_user(pool.id, "alias@example.gov").username == "user-1"
