"""What the bench asks for: each scenario's server, path and tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlencode

from bench import data
from bench.database import PAGE_SIZE
from bench.report import (
    COLD_ME_SCENARIO,
    CONTROL_SCENARIO,
    METRICS_AA_SCENARIO,
    METRICS_OFF_SCENARIO,
    METRICS_ON_SCENARIO,
)

METRICS_ON_SERVER = "api-metrics-on"
METRICS_OFF_SERVER = "api-metrics-off"
METRICS_AA_SERVER = "api-metrics-on-aa"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    server: str  # "api", "baseline" or one of the METRICS_*_SERVER
    path: str
    tokens: str  # "admin", "users" or "none"


def scenarios(users: int) -> list[Scenario]:
    last_page = math.ceil(users / PAGE_SIZE)
    users_path = "/api/v1/users?"
    return [
        Scenario("baseline", "baseline", "/", "admin"),
        # The baseline against its own neighbouring rounds: how far this box alone moves a ratio.
        Scenario(CONTROL_SCENARIO, "baseline", "/", "admin"),
        Scenario("health/live", "api", "/health/live", "admin"),
        Scenario("users/me", "api", "/api/v1/users/me", "users"),
        # What the request metrics cost: two servers alike but for METRICS (`bench.report`).
        Scenario(METRICS_ON_SCENARIO, METRICS_ON_SERVER, "/api/v1/users/me", "users"),
        Scenario(METRICS_OFF_SCENARIO, METRICS_OFF_SERVER, "/api/v1/users/me", "users"),
        Scenario(METRICS_AA_SCENARIO, METRICS_AA_SERVER, "/api/v1/users/me", "users"),
        Scenario(COLD_ME_SCENARIO, "api", "/api/v1/users/me", "cold"),
        Scenario("service-types", "api", "/api/v1/reference/service-types", "users"),
        Scenario("users first page", "api", users_path + urlencode({"page": 1}), "admin"),
        Scenario(
            "users middle page",
            "api",
            users_path + urlencode({"page": max(1, last_page // 2)}),
            "admin",
        ),
        Scenario("users last page", "api", users_path + urlencode({"page": last_page}), "admin"),
        Scenario(
            "users role+province",
            "api",
            users_path + urlencode({"role": "OFFICER", "province": data.province_name(7)}),
            "admin",
        ),
        Scenario("users q", "api", users_path + urlencode({"q": "user1234"}), "admin"),
        Scenario("provinces", "api", "/api/v1/reference/provinces", "users"),
    ]
