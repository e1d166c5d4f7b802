"""ASGI entry point for uvicorn: ``uvicorn alerts.web.main:app`` (settings from ALERTS_* variables)."""

from alerts.config import get_settings
from alerts.logs import configure_logging, warn_at_start
from alerts.web.app import create_app

# Each uvicorn worker process imports this: JSON logs (addresses masked) like every other process.
configure_logging(get_settings())
warn_at_start(get_settings(), "web")
app = create_app()
