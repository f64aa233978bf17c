# drover's container image. It packages the binary cargo built, so building the image needs
# neither a toolchain image nor network access:
#
#   cargo build --release --locked
#   docker build -t drover .
#   docker run --rm drover                      # validates the bundled examples-repo
#
# BASE must provide glibc (drover links libc, libm and libgcc_s); Debian's slim image does.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG BINARY=target/release/drover
COPY ${BINARY} /usr/local/bin/drover
COPY examples-repo /usr/share/drover/examples-repo
# No root inside the container: drover needs none of its own.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/drover"]
CMD ["validate", "/usr/share/drover/examples-repo"]
