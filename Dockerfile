# The defender-proxy image: the wheel built in one stage, installed into a venv on the official
# slim Python runtime in the next. Build with `make image` (docker or podman, whichever is there).
#
# The base is pinned by the digest of the official image's multi-arch index (Python 3.11.16 on
# bookworm, as published on 2026-08-25): its CPython is built with PGO and LTO
# (--enable-optimizations --with-lto), faster than a plain build. Both stages use the same base so
# the venv's interpreter link (/opt/venv/bin/python3) points at a Python the runtime stage has.
#
# Where no registry can be reached (shared/docs/local-images.md), build on a debootstrapped
# stand-in instead: podman cannot tag an image with a `name@sha256:...` reference, so the base is
# an ARG that the build overrides:
#   make image PYTHON_IMAGE=localhost/debian-python:bookworm BUILD_ARGS="--pull=never --network host"
# The stand-in has python3 at /usr/bin and no `python` or `pip` command, hence `python3 -m venv`
# and the venv's own pip below. It is for trying the steps, not for shipping.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/build.txt requirements/runtime.txt requirements/
COPY proxy/ proxy/
# Everything comes from the lock (requirements/, compiled by `make lock`), hashes checked: the
# project's wheel is built in a venv of its own by the locked setuptools, and the runtime venv gets
# the locked runtime set plus that wheel without its dependencies, so nothing unpinned gets in.
# pip and setuptools then leave the runtime venv: the container never installs anything.
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes -r requirements/build.txt \
    && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes -r requirements/runtime.txt \
    && /opt/venv/bin/pip install --no-index --no-deps /wheels/defender_proxy-*.whl \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="defender-proxy" \
      org.opencontainers.image.description="A sidecar reverse proxy for the Microsoft Defender API" \
      org.opencontainers.image.licenses="MIT"
# jemalloc: `defender-proxy run` starts on it where it is found (proxy/allocator.py), and gives
# back what a burst of load took once it subsides. Debian's package, at bookworm's version.
# A fixed numeric UID, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2=5.3.0-1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 defender \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin defender
COPY --from=build /opt/venv /opt/venv
# Nothing is written at run time (the .pyc files were compiled at install), so the container runs
# with a read-only root filesystem. Logs are JSON lines on stdout when there is no TTY.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# 8080 is the proxy port, on 127.0.0.1 by default (right for a sidecar: the pod shares loopback);
# set DEFENDER_PROXY_LISTEN=0.0.0.0:8080 to run it as a gateway. 9464 is the admin port
# (/metrics /healthz /readyz) on 0.0.0.0. No HEALTHCHECK: Kubernetes probes /healthz and /readyz.
EXPOSE 8080 9464
# Exec form: the proxy is PID 1 and gets SIGTERM itself; it handles it (drain, exit 0), so no
# init process is needed.
ENTRYPOINT ["/opt/venv/bin/defender-proxy"]
CMD ["run"]
