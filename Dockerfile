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
ENV FACESEARCH_HOME=/data FACESEARCH_INDEX=/data/index \
    FACESEARCH_LISTEN=0.0.0.0:50051 FACESEARCH_METRICS_LISTEN=0.0.0.0:9464 PATH=/app/.venv/bin:$PATH
EXPOSE 50051 9464
HEALTHCHECK --start-period=60s --interval=30s --timeout=5s CMD ["python", "scripts/healthcheck.py"]
ENTRYPOINT ["facesearch-server"]
CMD []
