# syntax=docker/dockerfile:1
#
# cloud-api-adaptor image (default target `runtime`) and the pod VM payload (target `podvm`).
#
#   docker build -t cloud-api-adaptor .                                   # every provider in providers/
#   docker build --build-arg PROVIDERS=aws -t cloud-api-adaptor:aws .     # only the chosen providers
#   docker build --target podvm -o type=local,dest=podvm-wheels .         # wheels for pod VM image builders
#
# The Python payload is built by deploy/image/payload.sh; tests/deploy runs the same steps in a venv.
# For releases pin the base by digest: --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------------
# builder: wheels for the core and the chosen providers, and a venv installed from them
FROM ${PYTHON_IMAGE} AS builder
# "all" (every providers/<name> with a pyproject.toml) or names separated by spaces or commas.
ARG PROVIDERS=all
WORKDIR /src
COPY deploy/image/payload.sh /usr/local/bin/caa-payload
COPY providers/ /src/providers/
# Compilers and headers only when a chosen provider's SDK builds from source (libvirt-python).
# hadolint ignore=DL3008,SC2086
RUN caa-payload providers /src "$PROVIDERS" > /providers.txt \
 && debs="$(caa-payload debs build "$(cat /providers.txt)")" \
 && if [ -n "$debs" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends $debs \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY . /src
RUN --mount=type=cache,target=/root/.cache/pip \
    caa-payload build /src /opt/cloud-api-adaptor /wheels "$(cat /providers.txt)" \
 && caa-payload podvm /wheels /podvm/wheels

# ---------------------------------------------------------------------------------------------------
# podvm: the pod VM side (agent-protocol-forwarder, process-user-data) as wheels for image builders:
#   COPY --from=<this image, target podvm> /wheels /tmp/caa-wheels
#   RUN python3 -m pip install --no-index --find-links /tmp/caa-wheels cloud-api-adaptor
# The wheels match the builder's Python minor version and architecture (set PYTHON_IMAGE to match the
# pod VM's Python).
FROM scratch AS podvm
COPY --from=builder /podvm/wheels /wheels

# ---------------------------------------------------------------------------------------------------
# runtime: the daemon. No compilers, headers, wheels or pip caches; just the venv and what the daemon
# runs: ip (iproute2), iptables/nftables for the pod network, and the providers' run-time libraries.
FROM ${PYTHON_IMAGE} AS runtime
COPY --from=builder /providers.txt /usr/share/cloud-api-adaptor/providers.txt
# hadolint ignore=DL3008,SC2046
RUN --mount=type=bind,from=builder,source=/usr/local/bin/caa-payload,target=/usr/local/bin/caa-payload \
    apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iproute2 iptables nftables \
      $(caa-payload debs runtime "$(cat /usr/share/cloud-api-adaptor/providers.txt)") \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/cloud-api-adaptor /opt/cloud-api-adaptor
ENV PATH=/opt/cloud-api-adaptor/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Runs as root: the daemon needs NET_ADMIN and SYS_ADMIN (granted by the DaemonSet, not privileged).
# CLOUD_PROVIDER (from the ConfigMap peer-pods-cm) selects the provider; `cloud-api-adaptor <provider>`
# works as the command too.
ENTRYPOINT ["cloud-api-adaptor", "serve"]
