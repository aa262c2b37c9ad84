"""The HTTPS API (control and records planes): FastAPI, served by uvicorn in the relay's loop."""

from .app import Principal, Services, create_app

__all__ = ["Principal", "Services", "create_app"]
