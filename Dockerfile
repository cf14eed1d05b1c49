# syntax=docker/dockerfile:1
#
# eventworker image: `docker run IMAGE` starts a worker, `docker run IMAGE migrate` applies
# migrations, any other CLI subcommand works the same way. Configure it with DATABASE_URL,
# REDIS_URL and EVENTWORKER_* variables, or mount a settings.env at /app/settings.env.
#
# Two stages: the builder installs the locked runtime dependencies (with the psycopg, mysql, http,
# otel extras) and then the project into /opt/venv; the final image gets that virtualenv only, so no
# source tree or pip cache ends up in it. Both stages use the same base image, because the
# virtualenv's python is a link to the base's interpreter.

FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# The dependencies come from the lock file alone (requirements/runtime.txt, made by `python3 dev.py
# lock`): each package at its pinned version, each file checked against its sha256, so an image built
# next month runs the same code as one built today. Copied before the sources so that this layer is
# rebuilt only when the lock changes. Every locked package ships a manylinux wheel for CPython 3.11
# (asyncmy, asyncpg, psycopg-binary, orjson, hiredis, greenlet, ...), so the builder needs no
# compiler; --only-binary=:all: keeps it that way: a new dependency without a wheel fails this step
# instead of quietly needing build-essential. The lock also pins the build backend (setuptools).
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements/runtime.txt

# Then the project itself, built from /src (.dockerignore lets only the package sources and their
# metadata in) with the locked setuptools: no dependency, no build tool and no index is fetched here.
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation --no-index . \
    && pip check


FROM python:3.11-slim-bookworm

# A fixed, numeric, non-root uid so that orchestrators can verify runAsNonRoot and volume
# ownership can be planned; --no-log-init keeps the large uid from bloating /var/log/faillog.
RUN groupadd --system --gid 10001 eventworker \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /app --shell /usr/sbin/nologin eventworker \
    && install -d -o 10001 -g 10001 /app

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EVENTWORKER_LOG_FORMAT=json

# Writable by the worker user: settings.env is read from here, and `eventworker demo`
# keeps its SQLite file here.
WORKDIR /app
USER 10001:10001

# Healthy while this container's worker has a fresh heartbeat in Redis (`--local`: the worker
# whose host name is the container's, so another container's crash does not mark this one
# unhealthy), Redis and the database answer, and the schema is current. `check` is the older
# name of `eventworker health`; exit 1 lists each problem. start-period gives a new worker time
# to connect and write its first heartbeat.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["eventworker", "check", "--local"]

ENTRYPOINT ["eventworker"]
CMD ["run"]
