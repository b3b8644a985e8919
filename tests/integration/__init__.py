"""Tests that talk to a real Kafka broker; marked ``integration`` by conftest.py."""
