"""The instance role's policy grants exactly the AWS operations the shipped code performs.

The operations are derived, not listed by hand: every boto3 client method the application
package refers to (called, or handed to a worker thread with `functools.partial`), mapped to its
API operation by botocore's own service model, for each service the package makes clients for;
and what `scripts/deploy_backend.sh` runs against ECR.

A secret under a customer-managed KMS key also needs what Secrets Manager does with that key on
the caller's behalf (`kms:Decrypt` for GetSecretValue), granted on the key only through Secrets
Manager (`kms:ViaService`) and only for the database secret (the encryption context's
`SecretARN`); that too is derived from the Secrets Manager operations the code calls.

The package holds its boto3 clients in names ending in `client` (`client`, `self._client`,
`self._once_client`); a method is an AWS operation when its receiver is so named, so the
adapter's own `get_user` or a pydantic `SecretStr.get_secret_value` do not count. A test keeps
the convention: every client the package builds is assigned to such a name.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from typing import Any

import boto3

from .nginx_harness import REPO_ROOT

POLICY = REPO_ROOT / "deploy" / "iam" / "instance-role-policy.json"
APP = REPO_ROOT / "backend" / "app"
DEPLOY_SCRIPT = REPO_ROOT / "scripts" / "deploy_backend.sh"
PLACEHOLDERS = {
    "AWS_REGION",
    "ACCOUNT_ID",
    "USER_POOL_ID",
    "DB_SECRET_NAME",
    "DB_SECRET_KMS_KEY_ID",
    "MIGRATION_DB_SECRET_NAME",
}
RESOURCES = {
    "cognito-idp": "arn:aws:cognito-idp:${AWS_REGION}:${ACCOUNT_ID}:userpool/${USER_POOL_ID}",
    "secretsmanager": (
        "arn:aws:secretsmanager:${AWS_REGION}:${ACCOUNT_ID}:secret:${DB_SECRET_NAME}-??????"
    ),
}
# The migrator's secret (docs/operations.md, "Database roles"): the deploy runs the migration,
# which is the app's code, with DB_SECRET_ID naming it, so it needs what the code calls on a secret.
MIGRATION_SECRET = (
    "arn:aws:secretsmanager:${AWS_REGION}:${ACCOUNT_ID}:secret:${MIGRATION_DB_SECRET_NAME}-??????"
)
ECR_REPOSITORY = "arn:aws:ecr:${AWS_REGION}:${ACCOUNT_ID}:repository/one-system-backend"
SECRET_KEY = "arn:aws:kms:${AWS_REGION}:${ACCOUNT_ID}:key/${DB_SECRET_KMS_KEY_ID}"
# What Secrets Manager asks KMS to do with a customer-managed key when a caller performs each
# operation, with the caller's permissions (Secrets Manager user guide, "Secret encryption and
# decryption": GetSecretValue decrypts the version's data key). Operations the code does not
# call are left out; a test fails if it starts calling a Secrets Manager operation not listed.
SECRETS_MANAGER_KMS = {"secretsmanager:GetSecretValue": {"kms:Decrypt"}}
# The only way the key may be used: through Secrets Manager, in the region, for this secret.
SECRET_KEY_CONDITION = {
    "StringEquals": {"kms:ViaService": "secretsmanager.${AWS_REGION}.amazonaws.com"},
    # StringLike: the secret's ARN ends in six random characters.
    "StringLike": {
        "kms:EncryptionContext:SecretARN": [RESOURCES["secretsmanager"], MIGRATION_SECRET]
    },
}
# Instance-role credentials used anywhere but through a VPC endpoint of the VPC they were
# delivered to are refused. AWS Security Blog, "How to use policies to restrict where EC2
# instance credentials can be used from" (2023): aws:EC2InstanceSourceVPC is set on every
# request signed with credentials issued to an EC2 instance (so it also serves as a policy
# variable here); aws:SourceVpc only on requests that came through a VPC endpoint, and a
# negated operator (StringNotEquals) is true when its key is absent (IAM User Guide, "Condition
# operators"), so a call over the internet or a NAT is refused too; ec2:SourceInstanceARN
# not null limits it to instance credentials; aws:ViaAWSService false exempts what a service
# does on the caller's behalf (Secrets Manager's kms:Decrypt).
VPC_CONDITION = {
    "StringNotEquals": {"aws:SourceVpc": "${aws:EC2InstanceSourceVPC}"},
    "Null": {"ec2:SourceInstanceARN": "false"},
    "BoolIfExists": {"aws:ViaAWSService": "false"},
}
# Its own statement: a user pool with a domain (COGNITO_DOMAIN) cannot be reached through a VPC
# endpoint (Cognito developer guide, "Access Amazon Cognito using an interface endpoint"), so
# such a deployment drops it.
POOL_DENY_SID = "DenyThePoolOutsideTheInstancesVpc"
# What each ECR step of the deploy script needs (the ECR user guide's "required IAM
# permissions for pushing and pulling images"). GetAuthorizationToken has no resource.
ECR_STEPS = {
    r"aws ecr get-login-password": {"ecr:GetAuthorizationToken"},
    r"docker pull \"\$ECR_REGISTRY/": {
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
    },
}


def _trees() -> list[ast.Module]:
    return [ast.parse(path.read_text()) for path in sorted(APP.rglob("*.py"))]


CLIENT_FACTORIES = {"client", "aws_client", "_client"}


def _name(node: ast.expr) -> str | None:
    """`x` of `x`, `a.x`, `a.b.x`, `f(...)`: the last identifier."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    return None


def _holds_a_client(node: ast.expr) -> bool:
    name = _name(node)
    return name is not None and name.lower().endswith("client")


def services_with_clients() -> set[str]:
    """The services the package makes boto3 clients for: the literal first argument of every
    `boto3.client(...)` / `aws_client(...)` call."""
    services = set()
    for tree in _trees():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            function = node.func
            name = (
                function.attr
                if isinstance(function, ast.Attribute)
                else getattr(function, "id", None)
            )
            first = node.args[0]
            if name in ("client", "aws_client") and isinstance(first, ast.Constant):
                services.add(str(first.value))
    return services


@cache
def _client(service: str) -> Any:
    # Only the service model is read: no call is made and no credentials are needed.
    return boto3.client(service, region_name="ap-southeast-1")


def unsigned(service: str, operation: str) -> bool:
    """Operations callers make without AWS credentials, which IAM therefore never authorises:
    Cognito's InitiateAuth and RespondToAuthChallenge, used by the token CLI (`app.cli.token`),
    are public sign-in calls (`authtype: none` in the service model)."""
    return _client(service).meta.service_model.operation_model(operation).auth_type == "none"


def operations_the_code_performs() -> dict[str, set[str]]:
    """IAM actions (`service:Operation`) per service, with the unsigned ones apart."""
    referenced = {
        node.attr
        for tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and _holds_a_client(node.value)
    }
    signed: set[str] = set()
    public: set[str] = set()
    for service in services_with_clients():
        client = _client(service)
        prefix = client.meta.service_model.signing_name
        for method, operation in client.meta.method_to_api_mapping.items():
            if method in referenced:
                (public if unsigned(service, operation) else signed).add(f"{prefix}:{operation}")
    return {"signed": signed, "public": public}


def policy() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(POLICY.read_text())
    return document


def allowing() -> list[dict[str, Any]]:
    statements = [s for s in policy()["Statement"] if s["Effect"] == "Allow"]
    assert {s["Effect"] for s in policy()["Statement"]} == {"Allow", "Deny"}
    return statements


def denying() -> list[dict[str, Any]]:
    return [statement for statement in policy()["Statement"] if statement["Effect"] == "Deny"]


def granted() -> dict[str, set[str]]:
    """Actions per resource, of the Allow statements without conditions."""
    grants: dict[str, set[str]] = {}
    for statement in allowing():
        if "Condition" in statement:
            continue
        assert set(statement) == {"Sid", "Effect", "Action", "Resource"}, statement
        grants.setdefault(statement["Resource"], set()).update(statement["Action"])
    return grants


def conditional() -> list[dict[str, Any]]:
    return [statement for statement in allowing() if "Condition" in statement]


def test_every_client_the_package_builds_is_held_in_a_name_ending_in_client() -> None:
    holders: list[str | None] = []
    for tree in _trees():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assign | ast.keyword):
                continue
            value = node.value
            if not (isinstance(value, ast.Call) and _name(value.func) in CLIENT_FACTORIES):
                continue
            if isinstance(node, ast.keyword):
                holders.append(node.arg)
            else:
                holders += [_name(target) for target in node.targets]
    assert {"client", "create_client"} <= set(holders), holders
    assert all(name and name.lower().endswith("client") for name in holders), holders


def test_the_derivation_sees_the_code() -> None:
    """Guards the guard: what every user change and the database secret need is found."""
    found = operations_the_code_performs()
    assert services_with_clients() == {"cognito-idp", "secretsmanager"}
    assert {
        "cognito-idp:AdminCreateUser",
        "cognito-idp:AdminDisableUser",
        "cognito-idp:ListUsersInGroup",
        "secretsmanager:GetSecretValue",
    } <= found["signed"]
    assert found["public"] == {"cognito-idp:InitiateAuth", "cognito-idp:RespondToAuthChallenge"}


def test_the_policy_grants_exactly_what_the_code_calls_on_the_pool_and_the_secret() -> None:
    needed = operations_the_code_performs()["signed"]
    grants = granted()
    for service, resource in RESOURCES.items():
        wanted = {action for action in needed if action.startswith(f"{service}:")}
        given = grants.get(resource, set())
        assert not wanted - given, f"the policy lacks {sorted(wanted - given)} on {resource}"
        assert not given - wanted, f"the code never calls {sorted(given - wanted)}"
    secret_calls = {action for action in needed if action.startswith("secretsmanager:")}
    assert grants.get(MIGRATION_SECRET) == secret_calls


def test_the_policy_grants_exactly_what_the_deploy_script_needs_from_ecr() -> None:
    script = DEPLOY_SCRIPT.read_text()
    needed = set().union(*(a for step, a in ECR_STEPS.items() if re.search(step, script)))
    assert needed, "the deploy script no longer logs in to ECR or pulls from it"
    grants = granted()
    assert grants.get("*") == {"ecr:GetAuthorizationToken"} & needed
    assert grants.get(ECR_REPOSITORY) == needed - {"ecr:GetAuthorizationToken"}


def test_the_secret_key_may_be_used_only_by_secrets_manager_for_the_database_secret() -> None:
    needed = operations_the_code_performs()["signed"]
    calls = {action for action in needed if action.startswith("secretsmanager:")}
    assert calls <= set(SECRETS_MANAGER_KMS), (
        f"what does Secrets Manager do with the secret's key for {sorted(calls)}?"
    )
    wanted = set().union(*(SECRETS_MANAGER_KMS[action] for action in calls))
    assert wanted == {"kms:Decrypt"}
    [statement] = conditional()
    assert statement["Effect"] == "Allow"
    assert set(statement) == {"Sid", "Effect", "Action", "Resource", "Condition"}, statement
    assert set(statement["Action"]) == wanted
    assert statement["Resource"] == SECRET_KEY
    assert statement["Condition"] == SECRET_KEY_CONDITION


def test_nothing_else_is_granted() -> None:
    assert policy()["Version"] == "2012-10-17"
    assert set(granted()) == {*RESOURCES.values(), MIGRATION_SECRET, ECR_REPOSITORY, "*"}
    assert not any(action.startswith("kms:") for action in set().union(*granted().values()))


def test_every_placeholder_is_documented() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)\}", POLICY.read_text()))
    assert used == PLACEHOLDERS
    documentation = (POLICY.parent / "README.md").read_text()
    for placeholder in PLACEHOLDERS:
        assert f"`${{{placeholder}}}`" in documentation, placeholder


def test_the_readme_says_when_the_key_statement_is_needed() -> None:
    documentation = " ".join((POLICY.parent / "README.md").read_text().split())
    [statement] = conditional()
    # Named, with how to drop it where the secret uses the AWS managed key.
    assert f'select(.Sid == "{statement["Sid"]}")' in documentation
    for needed in ("customer-managed key", "`aws/secretsmanager`", "`kms:ViaService`"):
        assert needed in documentation, needed


def test_every_grant_holds_only_through_the_instances_own_vpc() -> None:
    statements = denying()
    assert statements
    for statement in statements:
        assert set(statement) == {"Sid", "Effect", "Action", "Resource", "Condition"}, statement
        assert statement["Resource"] == "*"
        assert statement["Condition"] == VPC_CONDITION
    denied = {action.removesuffix(":*") for s in statements for action in s["Action"]}
    allowed = {action.split(":")[0] for s in allowing() for action in s["Action"]}
    assert allowed <= denied, f"granted without the VPC condition: {sorted(allowed - denied)}"
    # The pool's deny alone names Cognito, so a deployment whose pool has a domain can drop it.
    pool = [s for s in statements if "cognito-idp:*" in s["Action"]]
    assert [s["Sid"] for s in pool] == [POOL_DENY_SID]
    assert pool[0]["Action"] == ["cognito-idp:*"]


def test_the_readme_says_what_the_vpc_condition_needs() -> None:
    documentation = " ".join((POLICY.parent / "README.md").read_text().split())
    assert f'select(.Sid == "{POOL_DENY_SID}")' in documentation
    for needed in (
        "`aws:EC2InstanceSourceVPC`",
        "`com.amazonaws.${AWS_REGION}.secretsmanager`",
        "`com.amazonaws.${AWS_REGION}.ecr.api`",
        "`com.amazonaws.${AWS_REGION}.ecr.dkr`",
        "`com.amazonaws.${AWS_REGION}.cognito-idp`",
        "private DNS",
        "COGNITO_DOMAIN",
    ):
        assert needed in documentation, needed
