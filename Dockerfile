# syntax=docker/dockerfile:1
# One image for both daemons: `lockstep-agent` (DaemonSet) and `lockstep-controller` (Deployment); the Helm
# chart picks the command. Training images need no Lockstep image: `pip install lockstep` adds the probe; run
# `python -m agent.probe.compiled --build` once in the training image, after torch (g++ and ninja needed), for the
# probe's compiled all-reduce kernel (else it records with its Python kernel, at ~200 us more per CPU all-reduce).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# gcc builds the agent's C NIC counter sampler (agent/_nicsample.c) into the wheel; without it the agent samples
# from Python at ~4x the CPU. Not pinned: the stage only builds the wheel, and bookworm's point releases replace
# the pinned versions (the image would stop building)
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY agent ./agent
COPY controller ./controller
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="lockstep" \
      org.opencontainers.image.description="Lockstep agent and controller: find the node that breaks the lockstep of a training job" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/lockstep-dev/lockstep"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/lockstep-*.whl \
    && groupadd --system --gid 65532 lockstep \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin lockstep
USER 65532:65532
# agent: /metrics, /healthz, /readyz, /api/v1/evidence; controller: /metrics, /healthz, /readyz, /api/v1/nodes|jobs
EXPOSE 9445 9446
ENTRYPOINT ["lockstep-agent"]
