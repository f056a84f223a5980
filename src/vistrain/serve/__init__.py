"""Serving an exported model without torch: a FastAPI app, a web page and a Lambda-style handler."""

from vistrain.serve.app import create_app
from vistrain.serve.core import ServeConfig

__all__ = ["ServeConfig", "create_app"]
