"""FastAPI application: link pages for subscribers, the JSON API, webhooks, operator views."""

from alerts.web.app import create_app

__all__ = ["create_app"]
