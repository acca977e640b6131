# syntax=docker/dockerfile:1
#
# herald in a container: a build stage with the Rust toolchain, and a small runtime image (distroless: glibc,
# CA certificates, no shell) that runs herald as a non-root user.
#
#   docker build -t herald .
#   docker run -p 3000:3000 herald                                # the demo site on http://127.0.0.1:3000/
#   docker run -p 80:80 -e PORT=80 -e REDIS_URL=redis://… herald  # as crossroads' image was run
#   docker run -v herald-data:/var/lib/herald …                    # keep the state (embedded mailboxes) over restarts
#
# crossroads' config.yml and sites.yml mounted into /app (the working directory) are read as crossroads read them.
# crates/herald/tests/deploy.rs checks this file against README.md and the binary.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target directory live in BuildKit caches, so a rebuild after a source change compiles only
# what changed. The target directory is a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release -p herald \
    && install -D -m 0755 target/release/herald /out/herald \
    && install -d -m 0750 -o 65532 -g 65532 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/herald /usr/local/bin/herald
COPY --from=build --chown=65532:65532 /out/data /var/lib/herald
# Every interface inside the container; PORT (crossroads' variable) replaces the port and keeps the address.
ENV HERALD_LISTEN=0.0.0.0:3000 \
    HERALD_DATA_DIR=/var/lib/herald
WORKDIR /app
USER 65532:65532
EXPOSE 3000
# No curl in this image: herald probes itself, at the port the same configuration gives (PORT included).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/herald", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/herald"]
