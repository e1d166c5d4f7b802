# One image for every role (migrate, web, worker, beat, flower); the command picks the role.
# Pinned to a patch release (pin the digest too when you mirror it).
FROM python:3.11.10-slim-bookworm

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
# Flower at the version pinned in pyproject.toml's "flower" extra.
RUN pip install -e '.[flower]'
# Bytecode compiled once here: with PYTHONDONTWRITEBYTECODE nothing is written later, and an editable install
# is not compiled by pip, so every process (each watcher pass and its lanes) would compile the package again.
RUN python -m compileall -q alerts

USER alerts
EXPOSE 8000
CMD ["alerts", "web", "--host", "0.0.0.0", "--port", "8000"]
