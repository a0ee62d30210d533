"""Probes: `/health` for the ALB (checks the database), `/health/live` for the container runtime."""

from fastapi.responses import JSONResponse

from app.api.deps import SettingsDep
from app.api.routing import GatedRouter
from app.core.db import HealthEngineDep, database_is_reachable
from app.schemas.health import HealthResponse, LivenessResponse

router = GatedRouter(gate="/health", tags=["health"])


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "The database is unreachable"}},
)
async def health(engine: HealthEngineDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: 200 when this instance can reach the database, 503 (drain me) when not."""
    reachable = await database_is_reachable(engine, settings.health_timeout_seconds)
    if reachable:
        return JSONResponse({"status": "ok", "db": "ok"})
    return JSONResponse({"status": "error", "db": "error"}, status_code=503)


@router.get("/health/live", response_model=LivenessResponse)
async def liveness() -> LivenessResponse:
    """Liveness: the process answers; touches no dependency."""
    return LivenessResponse()
