# drover's container image. It packages the binary cargo built, so building the image needs
# neither a toolchain image nor network access:
#
#   cargo build --release --locked
#   docker build -t drover .
#   docker run --rm drover                      # validates the bundled examples-repo
#   docker run -d --network host -v /var/lib/drover:/var/lib/drover -v /srv/clusters:/repo:ro \
#       drover serve --source /repo            # the daemon (state dir owned by uid 65532, 0700)
#
# BASE must provide glibc (drover links libc, libm and libgcc_s); Debian's slim image does.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG BINARY=target/release/drover
COPY ${BINARY} /usr/local/bin/drover
COPY examples-repo /usr/share/drover/examples-repo
# No root inside the container: drover needs none of its own.
USER 65532:65532
# The daemon's state: its CA, node credentials, tokens and rollout records.
VOLUME /var/lib/drover
ENTRYPOINT ["/usr/local/bin/drover"]
CMD ["validate", "/usr/share/drover/examples-repo"]
