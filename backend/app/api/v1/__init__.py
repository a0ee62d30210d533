"""Routers of API version 1; `api_router` is mounted under /api/v1."""

from fastapi import APIRouter

from app.api.v1 import reference, users

api_router = APIRouter()
api_router.include_router(users.router)
api_router.include_router(reference.router)
