# syntax=docker/dockerfile:1
# Two stages: a build stage with torch converts dlib's models into an ONNX bundle;
# the runtime stage has no torch at all (onnxruntime + numpy + OpenCV + FAISS).
# Every RUN step is a script that CI also runs (scripts/setup-venv.sh, scripts/export-models.sh).

FROM python:3.11-slim AS export
WORKDIR /src
COPY pyproject.toml README.md ./
COPY facesearch facesearch
COPY export export
COPY indexer indexer
COPY server server
COPY scripts scripts
RUN scripts/setup-venv.sh serve
RUN FACESEARCH_HOME=/bundle scripts/export-models.sh /bundle/models/dlib

FROM python:3.11-slim AS runtime
RUN useradd --create-home --uid 10001 facesearch
WORKDIR /app
COPY pyproject.toml README.md ./
COPY facesearch facesearch
COPY export export
COPY indexer indexer
COPY server server
COPY scripts scripts
RUN scripts/setup-venv.sh runtime
COPY --from=export /bundle/models /data/models
RUN mkdir -p /data/index && chown -R facesearch /data
USER facesearch
# gRPC listens on the container's interface (a published port reaches it): serve it with TLS and
# scoped tokens, never open. Mount the secrets read-only and name them (README "Security"):
#   facesearch-server token new --name frontdoor --scopes identify --append secrets/tokens
#   docker run -p 50051:50051 -v $PWD/secrets:/run/secrets:ro \
#     -e FACESEARCH_TLS_CERT=/run/secrets/server.pem -e FACESEARCH_TLS_KEY=/run/secrets/server.key \
#     -e FACESEARCH_AUTH_TOKENS_FILE=/run/secrets/tokens facesearch
# (mTLS: also FACESEARCH_TLS_CLIENT_CA and FACESEARCH_TLS_CLIENT_SCOPES, certificate CN -> scopes.)
# Without TLS and auth the server starts but logs SECURITY warnings and reports them in GetStats;
# tokens without TLS are refused at start. Metrics have no auth: they stay on the container's
# loopback unless FACESEARCH_METRICS_LISTEN=0.0.0.0:9464 is set for a scraper on a private network.
ENV FACESEARCH_HOME=/data FACESEARCH_INDEX=/data/index \
    FACESEARCH_LISTEN=0.0.0.0:50051 FACESEARCH_METRICS_LISTEN=127.0.0.1:9464 PATH=/app/.venv/bin:$PATH
EXPOSE 50051
HEALTHCHECK --start-period=60s --interval=30s --timeout=5s CMD ["python", "scripts/healthcheck.py"]
ENTRYPOINT ["facesearch-server"]
CMD []
