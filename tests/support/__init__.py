"""Code the tests share (importable as ``support``; conftest.py puts tests/ on ``sys.path``).

* :mod:`support.factories`: ticks -> Kafka-like records -> Arrow batches -> DuckDB files;
* :mod:`support.waiting`: the one way a test waits for something (:func:`wait_until`);
* :mod:`support.processes`: child processes of a test, and checking none is left over;
* :mod:`support.fakes`: stand-ins for kafka-python classes, secrets, plain settings;
* :mod:`support.api`: the Flask app on a store file, and reading its JSON;
* :mod:`support.bad_messages`: every kind of message that must become a dead letter;
* :mod:`support.live`: ``marketstream live`` in a subprocess (integration and browser tests);
* :mod:`support.tools`: the scripts under ``tools/`` as modules (``load_tool``);
* ``crash_consumer.py``: a script, the consumer with a SIGKILL at a named step.
"""
