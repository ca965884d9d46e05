"""The one redaction function: passwords in URLs never leave tuner.

Every boundary where text leaves the process (messages, log lines, MLflow params, tags and
artifacts, the study-YAML artifact included) passes it through :func:`redact`. It hides:

- the password of a URL's userinfo, ``scheme://user:PASSWORD@host`` (also in broken URLs
  without a scheme, and when the password holds an unescaped ``@``);
- query-string and DSN values of password-like keys, ``?password=...``, ``&sslpassword=...``,
  ``pwd=``, ``secret=``, ``token=``, ``api_key=`` and friends;
- both forms (as written and percent-decoded) of every password found, wherever else they occur
  in the same text, and of the passwords of the ``urls`` passed along (a driver's message may
  quote a password decoded, far from its URL).

A ``${VAR}`` reference written in place of a password is kept: it names a secret without
holding it, and tells the reader which variable to set.

This module imports only the standard library, so that every layer can use it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["MASK", "redact", "secrets_of"]

MASK = "***"

# A whole ``${NAME}``: a reference to a secret, not a secret.
_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")

# ``scheme://user:password@``: greedy up to the last "@" of the token, since a password may
# itself hold an unescaped "@"; a token ends at whitespace or a quote.
_USERINFO = re.compile(
    r"(?P<head>(?:[A-Za-z][A-Za-z0-9+.\-]*:/{0,2}|//)[^:/@\s'\"<>]*:)"
    r"(?P<secret>[^\s'\"<>]*)(?P<tail>@)"
)
# ``user:password@host`` with no ``//`` at all (a URL too broken to parse, as users write them).
_BARE_USERINFO = re.compile(
    r"(?P<head>(?<![\w/:.%+\-~])[\w.%+\-~]+:)(?P<secret>[^\s@/'\"<>]+)(?P<tail>@[\w\[])"
)
# ``password=...`` in a query string, a libpq DSN (``host=db password=x``) or a message.
_KEY = (
    r"[\w.\-]*(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|access[_-]?key"
    r"|credentials?)[\w.\-]*|pass"
)
_KEY_VALUE = re.compile(
    rf"(?P<head>(?:^|(?<=[?&;\s,({{]))(?:{_KEY})=)(?P<secret>[^&#;\s'\"<>]*)",
    re.IGNORECASE,
)
_PATTERNS = (_USERINFO, _BARE_USERINFO, _KEY_VALUE)
# Shorter literals are too likely to be ordinary words to be replaced everywhere.
_MIN_LITERAL = 4


def secrets_of(text: str) -> set[str]:
    """The passwords that :func:`redact` finds in ``text``, as written and percent-decoded.

    >>> sorted(secrets_of("postgresql://u:p%40ss@db/x?sslpassword=k3y"))
    ['k3y', 'p%40ss', 'p@ss']
    """
    found: set[str] = set()
    for pattern in _PATTERNS:
        for match in pattern.finditer(text):
            secret = match.group("secret")
            if secret and not _REFERENCE.fullmatch(secret):
                found.update({secret, unquote(secret)})
    return found


def _mask(match: re.Match[str]) -> str:
    secret = match.group("secret")
    if not secret or _REFERENCE.fullmatch(secret):
        return match.group(0)
    tail = match.groupdict().get("tail") or ""
    return f"{match.group('head')}{MASK}{tail}"


def redact(text: object, *urls: str | None) -> str:
    """``str(text)`` with every password hidden (see the module docstring).

    ``urls`` are URLs whose passwords must vanish from ``text`` in any form, for messages that
    may quote one decoded (a database driver's error, say).

    >>> redact("postgresql+psycopg://tuner:s3cret@db:5432/tuner")
    'postgresql+psycopg://tuner:***@db:5432/tuner'
    >>> redact("postgresql://u@db/t?sslmode=require&password=s3cret&sslpassword=k3y")
    'postgresql://u@db/t?sslmode=require&password=***&sslpassword=***'
    >>> redact("postgresql://u:${PGPASSWORD}@db/t")
    'postgresql://u:${PGPASSWORD}@db/t'
    >>> redact("login failed for p@ss:w0rd", "postgresql://u:p%40ss%3Aw0rd@db/t")
    'login failed for ***'
    """
    out = str(text)
    literals = secrets_of(out)
    for url in urls:
        if url:
            literals |= secrets_of(str(url))
    for pattern in _PATTERNS:
        out = pattern.sub(_mask, out)
    # Longest first: a secret that contains another is replaced whole.
    for literal in sorted(literals, key=len, reverse=True):
        if len(literal) >= _MIN_LITERAL and literal != MASK:
            out = out.replace(literal, MASK)
    return out
