# syntax=docker/dockerfile:1
#
# One image for the operator and every component (DESIGN §1, §2). The entrypoint is `qt`:
#   qt operator -A                  the operator (the chart's Deployment)
#   qt component <name>             one trading component (the operator's Deployments: args [component, <name>])
#   qt version                      the code version baked in below
#
# Build:  make image   (docker build --build-arg QT_CODE_VERSION=$(git rev-parse HEAD) -t quantum-trader:dev .)
#
# Base image: a tag, because digests cannot be resolved where this file was written. Pin it by digest for
# reproducible builds; the digest of the tag is printed by
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# and goes in as  --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------- build
# Everything is installed into a virtualenv that the runtime stage copies whole. Every dependency is a binary
# wheel (--only-binary), so this stage needs no compiler either, and the runtime stage gets no build tools.
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# CPU-only torch first, from PyTorch's CPU index: the PyPI wheel would pull gigabytes of CUDA libraries.
RUN pip install --only-binary=:all: torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# The pinned dependencies of pyproject.toml, in their own layer: a source change does not reinstall them.
# (torch==2.13.0 in that list is already satisfied by 2.13.0+cpu.)
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --only-binary=:all: -r /tmp/requirements.txt

# The project itself (not editable), then a check that the console script and both packages import.
COPY components ./components
COPY operator ./operator
RUN pip install --no-deps . \
    && qt --help >/dev/null \
    && python -c "import quantum_trader, quantum_trader_operator.handlers"

# -------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

# (re-declared: an ARG before the first FROM is only in scope for FROM lines)
ARG PYTHON_IMAGE
# The git commit of the code: every component reports it in its heartbeats (Settings.code_version, DESIGN §5 drift).
ARG QT_CODE_VERSION=unknown
ARG QT_VERSION=0.1.0
ARG BUILD_DATE=unknown
ARG SOURCE_URL=https://github.com/quantum-trader/quantum-trader

LABEL org.opencontainers.image.title="quantum-trader" \
      org.opencontainers.image.description="Kubernetes-native crypto-futures trading platform: every component and the kopf operator" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${QT_VERSION}" \
      org.opencontainers.image.revision="${QT_CODE_VERSION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A fixed numeric user: Kubernetes' runAsNonRoot can only verify a numeric USER (the pods run as 10001 too).
RUN groupadd --system --gid 10001 qt \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin qt

COPY --from=build /opt/venv /opt/venv
# Model artifacts baked into the image: a TradingPolicy names one by name and digest (spec.model).
COPY models/ /opt/quantum-trader/models/

# HOME=/tmp: pods run with a read-only root filesystem and an emptyDir at /tmp, so caches land there.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    QT_MODELS_DIR=/opt/quantum-trader/models \
    QT_CODE_VERSION=${QT_CODE_VERSION}

WORKDIR /opt/quantum-trader
USER 10001:10001

# 8080 /healthz /readyz (components) or kopf's liveness (operator); 9100 component metrics; 9200 operator
# metrics; 8090 the exchange simulator. No HEALTHCHECK: Kubernetes ignores it, and the probes differ per
# component (the operator's Deployments and the chart define them).
EXPOSE 8080 8090 9100 9200

ENTRYPOINT ["qt"]
CMD ["--help"]
