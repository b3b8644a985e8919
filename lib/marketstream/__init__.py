"""marketstream: synthetic market ticks -> Kafka -> DuckDB -> notebooks, API, Voila, Grafana.

The notebooks, the Flask API and the CLI all import this package; each module
is one concern (settings, ticks, broker, produce, consume, store, logs,
pipeline) so each can be read, tested and swapped on its own.
"""

#: The one place of the version: pyproject.toml reads it (setuptools dynamic version).
__version__ = "0.1.0"
