# A small S3-compatible server (s3s-fs, the one CI tests against) for docker/compose.offline.yaml:
# a stand-in for MinIO where its images cannot be pulled. Not for production: one directory
# per bucket on the /data volume, one access key.
#   docker build -f docker/s3s-fs.Dockerfile -t floatzip-s3s-fs:0.14.1 docker
FROM rust:1.95-slim-bookworm AS build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo install s3s-fs@0.14.1 --features binary --locked --root /out

FROM debian:bookworm-slim
# curl: the healthcheck, and --aws-sigv4 requests to create the bucket.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10002 s3 \
 && useradd --system --uid 10002 --gid s3 --home-dir /data --shell /usr/sbin/nologin s3 \
 && mkdir -p /data && chown s3:s3 /data
COPY --from=build /out/bin/s3s-fs /usr/local/bin/s3s-fs
USER s3:s3
VOLUME ["/data"]
EXPOSE 9000
ENTRYPOINT ["s3s-fs"]
CMD ["--host", "0.0.0.0", "--port", "9000", "/data"]
