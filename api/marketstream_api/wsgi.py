"""The WSGI entry points, configured from the environment.

``app`` is the API; ``original_paths_app`` is the same app (one read cache) with
``/live`` and ``/metrics`` answering in the original kit's shape, for dashboards
saved against that kit (``serve --original-paths``, see :class:`.app.OriginalPaths`).
``python -m marketstream_api.serve`` runs one of them under granian; any other WSGI
server (gunicorn, waitress, uWSGI) can serve the same objects.
"""

from __future__ import annotations

from .app import OriginalPaths, create_app

app = create_app()
original_paths_app = OriginalPaths(app)
