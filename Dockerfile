# syntax=docker/dockerfile:1

# Stage 1: build wheels of the project and every dependency, so the runtime stage installs
# from local files only and never needs a compiler, a cache or network access to an index.
# The dependencies are requirements/runtime.txt, the lock's runtime part: exact versions, and
# pip refuses any downloaded file whose hash the lock does not list.
FROM python:3.12-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN pip wheel --no-cache-dir --require-hashes --no-deps --wheel-dir /wheels \
    -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY backend/app ./backend/app
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: the runtime image: the installed wheels, the migrations, an unprivileged user.
FROM python:3.12-slim AS runtime

# uvicorn reads WEB_CONCURRENCY and FORWARDED_ALLOW_IPS itself when no --workers /
# --forwarded-allow-ips flag is given, so the exec-form CMD needs no shell; compose overrides them.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    WEB_CONCURRENCY=2 \
    FORWARDED_ALLOW_IPS=127.0.0.1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app

# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
# Exactly those wheels, nothing resolved here (--no-deps); pip check then proves they satisfy
# one another.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/*.whl \
    && pip check

# alembic.ini's script_location is relative, so `alembic upgrade head` runs from here
# (docker compose run --rm app alembic upgrade head).
WORKDIR /app
COPY --chown=root:root alembic.ini ./
COPY --chown=root:root alembic ./alembic

USER 10001:10001
EXPOSE 8000

# /health/live never touches the DB, so a DB outage does not make the runtime restart the app;
# the ALB probes /health (through nginx) for that. No curl in the image: python's urllib
# raises on a refused connection or a non-2xx status, which exits non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=3)"]

# Keep-alive 15 s stays above nginx's upstream keepalive_timeout (10 s), so nginx never reuses
# a connection uvicorn is closing. Graceful shutdown stays below compose's stop_grace_period.
# app.serve empties PROMETHEUS_MULTIPROC_DIR (one view of every web worker's metrics), then
# becomes uvicorn with these arguments.
CMD ["python", "-m", "app.serve", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--timeout-keep-alive", "15", "--timeout-graceful-shutdown", "20", "--no-server-header"]
