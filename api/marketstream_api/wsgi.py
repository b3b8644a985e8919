"""The WSGI entry point, ``marketstream_api.wsgi:app``, configured from the environment.

``python -m marketstream_api.serve`` runs it under granian; any other WSGI
server (gunicorn, waitress, uWSGI) can serve the same object.
"""

from __future__ import annotations

from .app import create_app

app = create_app()
