"""Credentials kept out of everything the kit shows: reprs, error lines, logs, notebooks, JSON.

Why one module: the lake's description masked a catalog password, but the
catalog's own error line echoed ``MARKET_DUCKLAKE_CATALOG='password=...'``
whole, and ``Settings``' repr showed the connection string (so every executed
notebook that displays its settings saved it). Each place that shows text had
its own rule, or none. Now there is one: :func:`redact` masks

* a libpq keyword password (``password=...``, quoted or not),
* the password of a URL's user info (``postgresql://user:password@host``),
* any value it is given (the settings' secrets, :meth:`Settings.secret_values`),
  wherever it appears, for messages that quote a secret in some other form.

A value shorter than :data:`MIN_MASKED` characters is only masked where it
appears as a password: replacing every ``a`` in an error line would hide the
line, not the secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MASK", "MIN_MASKED", "mask", "passwords_in", "redact"]

#: What a secret is shown as.
MASK = "***"

#: Values at least this long are masked wherever they appear.
MIN_MASKED = 4

#: ``password=value`` or ``password = 'va lue'`` (libpq keywords; also a URL's query)
_KEYWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
#: ``scheme://user:password@`` (the password may be empty)
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@\s]*)@", re.IGNORECASE)


def passwords_in(text: str) -> list[str]:
    """The passwords a connection string holds, as written (quotes stripped)."""
    found = [m.group(2).strip("'") for m in _KEYWORD.finditer(text)]
    found += [m.group(2) for m in _USERINFO.finditer(text)]
    return [p for p in found if p]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every password it holds, and every one of ``secrets``, masked."""
    for value in sorted({s for s in secrets if len(s) >= MIN_MASKED}, key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _KEYWORD.sub(lambda m: m.group(1) + MASK, text)
    return _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)


def mask(value: str) -> str:
    """A secret setting as a person may see it: a connection string with its password
    masked (where it points is no secret), anything else masked whole."""
    if not value:
        return ""
    if "=" in value or "://" in value:
        return redact(value)
    return MASK
