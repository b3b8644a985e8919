# The marketstream Python image: the live pipeline, the API and the Voila page all run from it
# (docker-compose.yml picks the command). Kafka itself runs from the apache/kafka image.
# EXTRAS picks the optional parts: the default serves all three; an image for the API alone is
#   docker build --build-arg EXTRAS=api -t marketstream-api .
# (JupyterLab, the `lab` extra, is never in the image: only `make lab` uses it.)
FROM python:3.11-slim
ARG EXTRAS=api,voila,lake

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MARKET_DB_PATH=/data/market_data.duckdb \
    MARKET_CSV_PATH=/data/indices_sample.csv \
    MARKET_LOG_PATH=/data/logs/pipeline.log \
    MARKET_OUTPUT_DIR=/data/output

WORKDIR /app

# The project (see .dockerignore for what stays out), installed with its pinned dependencies.
COPY . /app
RUN pip install "/app[${EXTRAS}]" \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /data/logs /data/output \
    && chown -R app:app /data /app

# /data holds the DuckDB file shared by the pipeline (writer), the API and Voila (readers).
VOLUME ["/data"]
USER app

# API, Voila.
EXPOSE 8080 8866

CMD ["marketstream", "live", "--no-api", "--no-voila"]
