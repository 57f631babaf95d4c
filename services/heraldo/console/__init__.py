"""The job console: a static page and small script, served through Envoy's edge at ``/console/``.

The page calls the same REST API as everyone else (``/v1/jobs`` and friends) from the browser, so
it needs no server-side state and passes the same authentication as ``curl`` does.
"""

from heraldo.console.server import CONSOLE_PREFIX, make_app

__all__ = ["CONSOLE_PREFIX", "make_app"]
