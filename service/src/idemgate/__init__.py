"""idemgate: the HTTP idempotency gateway.

Run it with ``idemgate serve``; build it into another ASGI server with ``create_app()``.
"""

from importlib.metadata import version

__version__ = version("idemgate")

from idemgate._app import create_app
from idemgate._settings import Settings

__all__ = ["Settings", "__version__", "create_app"]
