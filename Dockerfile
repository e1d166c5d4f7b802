# One image for every role (migrate, web, worker, beat, flower); the command picks the role.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 alerts

COPY pyproject.toml README.md ./
COPY alerts ./alerts
COPY templates ./templates
COPY static ./static
RUN pip install -e . flower

USER alerts
EXPOSE 8000
CMD ["alerts", "web", "--host", "0.0.0.0", "--port", "8000"]
