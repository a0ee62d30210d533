"""The baseline: a bare FastAPI app with one route, served exactly like the API.

Whatever the API costs on top of this (middleware, logging, auth, the database) is what the
benchmark's ratios measure.
"""

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def root() -> dict[str, str]:
    return {"status": "ok"}
