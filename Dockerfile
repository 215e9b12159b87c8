# Vega Gateway container image: a static binary on distroless, non-root.
#
#   docker build -t vega-gateway:dev --build-arg VERSION=$(git describe --tags --always --dirty) .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts
# and the automatic platform arguments; deploy/README.md has the run recipes.
# deploy/validate checks this file's shape in CI, and .ci/deploy-check.sh runs
# the binary built with the same command the way this image does.

# ---- build stage -------------------------------------------------------------
# Pinned to the build platform so `docker buildx build --platform linux/arm64`
# cross-compiles natively instead of running the Go toolchain under emulation:
# with CGO off, GOOS/GOARCH are all a cross build needs.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build

WORKDIR /src

# go.mod and go.sum alone first: this layer, and the module download in it,
# is reused until the dependencies change, not on every source edit.
COPY go.mod go.sum ./
RUN go mod download

COPY . .

# VERSION is stamped into main.version; "dev" marks an unlabelled build.
ARG VERSION=dev
ARG TARGETOS
ARG TARGETARCH

# CGO_ENABLED=0: the runtime image has no libc, so the binary must be static.
# -trimpath: no build-machine paths in the binary (reproducible, no leak of
# the builder's layout). -s -w: no symbol table or DWARF, a smaller image.
# The build cache is a cache mount: it speeds up rebuilds and never lands in
# a layer.
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/vega-gateway .

# ---- runtime stage -----------------------------------------------------------
# distroless/static: CA certificates, tzdata and /etc/passwd with the nonroot
# user (65532), and no shell or package manager to attack or to need.
FROM gcr.io/distroless/static-debian12:nonroot

ARG VERSION=dev
LABEL org.opencontainers.image.title="vega-gateway" \
      org.opencontainers.image.description="Reverse proxy in front of Ollama" \
      org.opencontainers.image.version="${VERSION}"

# The binary alone: no config file is needed inside the image, configuration
# comes from VEGA_* environment variables (or a --config file mounted by the
# orchestrator, as the Helm chart does).
COPY --from=build /out/vega-gateway /vega-gateway

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading
# /etc/passwd.
USER 65532:65532

# 8000: data listener (Ollama/OpenAI API). 8001: admin listener (/healthz,
# /readyz, /metrics, /admin/...).
EXPOSE 8000 8001

# Container defaults, each overridable with -e:
# - the admin listener binds all interfaces so that probes and port
#   publishing reach it; the gateway then refuses to start unless an admin
#   key (VEGA_AUTH_ADMIN_API_KEYS, or VEGA_AUTH_API_KEYS) is set, and keeps
#   /healthz and /readyz open;
# - VEGA_LOG_DIR is empty: logs go to stdout only, where the container
#   runtime collects them, and the read-only root filesystem needs no
#   writable directory.
ENV VEGA_GATEWAY_LISTEN=:8000 \
    VEGA_ADMIN_LISTEN=0.0.0.0:8001 \
    VEGA_LOG_DIR=

# Exec form, so neither needs a shell (there is none in this image). The
# healthcheck subcommand GETs http://127.0.0.1:8000/healthz with a 2 s
# timeout and exits 0 on 200, else 1: keep the data listener on 8000 inside
# the container and remap ports with -p.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/vega-gateway", "healthcheck"]

ENTRYPOINT ["/vega-gateway"]
CMD ["serve"]
