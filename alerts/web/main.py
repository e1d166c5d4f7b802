"""ASGI entry point for uvicorn: ``uvicorn alerts.web.main:app`` (settings from ALERTS_* variables)."""

from alerts.web.app import create_app

app = create_app()
