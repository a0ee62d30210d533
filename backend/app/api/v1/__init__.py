"""Routers of API version 1; `api_router` is mounted under /api/v1."""

from fastapi import APIRouter

api_router = APIRouter()
