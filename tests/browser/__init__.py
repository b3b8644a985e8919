"""Headless Chromium against the Voila page; marked ``browser`` (and ``integration``)."""
