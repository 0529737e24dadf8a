# Herald's container image: `docker build -t herald .`, then `docker run -p 8000:8000 herald`.
# scripts/check_image_install checks the install step below without a Docker engine.

# Both stages use the same image: the venv's python is a symlink to the base image's.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# .dockerignore lets in only what the wheel is built from, and the install script.
COPY . .
RUN scripts/build_venv /opt/herald

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="herald" \
      org.opencontainers.image.description="Pub/sub notification broadcaster: publish into Redis Streams, subscribe over Server-Sent Events." \
      org.opencontainers.image.licenses="MIT"
# A fixed numeric id: Kubernetes checks runAsNonRoot only against a numeric USER.
RUN groupadd --system --gid 10001 herald \
 && useradd --system --no-log-init --uid 10001 --gid 10001 \
      --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin herald
# Only the venv: no pip cache, no source tree, no compiler. Owned by root, so the
# service cannot change its own code.
COPY --from=builder /opt/herald /opt/herald
# The .pyc files were compiled at install: nothing is written at run time, so the root
# filesystem may be read-only (the demo producers alone write, under /tmp).
ENV PATH=/opt/herald/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HERALD_HOST=0.0.0.0
USER 10001:10001
EXPOSE 8000
# uvicorn picks uvloop and httptools (from uvicorn[standard]) by itself. No HEALTHCHECK:
# Kubernetes probes /healthz and /readyz.
ENTRYPOINT ["herald"]
CMD ["serve"]
