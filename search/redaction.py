"""Secrets in storage URLs: find them, and mask them in anything shown or stored.

A password may sit in the user-info part (`user:PW@host`, even with an unescaped `@` in it)
or in a query parameter (`?password=PW`); both are masked everywhere the project writes a
URL or an error that may quote one: console, study attributes, exports, artifacts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlencode

MASK = "***"
SECRET_QUERY_KEYS = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)
_URL = re.compile(r"^(?P<scheme>[A-Za-z][\w+.-]*://)(?P<rest>.*)$", re.DOTALL)


def _split(url: str) -> tuple[str, str, str, str] | None:
    """(scheme://, user-info, host-and-path, query) with the user-info ending at the LAST '@'."""
    match = _URL.match(url)
    if not match:
        return None
    rest = match["rest"]
    rest, _, query = rest.partition("?")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    # The path may not hold an '@' of the user-info, but an unescaped '@' in a password can
    # push the last '@' past the first '/': then look in the whole part before the query.
    at = rest.rfind("@") if "@" in rest and "@" not in authority else authority.rfind("@")
    if at < 0:
        return match["scheme"], "", rest, query
    return match["scheme"], rest[:at], rest[at + 1 :], query


def normalise_url(url: str) -> str:
    """The URL with its password percent-encoded, so an '@' or ':' in it cannot move the host."""
    parts = _split(url)
    if parts is None or ":" not in parts[1]:
        return url
    scheme, userinfo, host, query = parts
    user, _, password = userinfo.partition(":")
    encoded = quote(unquote(password), safe="")
    return f"{scheme}{user}:{encoded}@{host}" + (f"?{query}" if query else "")


def url_secrets(url: str) -> list[str]:
    """Every secret in `url`, in each form it may appear in a message (raw and percent-decoded)."""
    parts = _split(url)
    if parts is None:
        return []
    _, userinfo, _, query = parts
    found: list[str] = []
    if ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    for key, value in parse_qsl(query, keep_blank_values=False):
        if SECRET_QUERY_KEYS.search(key):
            found.append(value)
    forms = {form for secret in found if secret for form in (secret, unquote(secret), quote(unquote(secret), safe=""))}
    return sorted(forms, key=len, reverse=True)  # longest first: no partial masks


def redact(url: str) -> str:
    """The URL with every password and secret query value replaced by ***, safe to show and store."""
    parts = _split(url)
    if parts is None:
        return mask(url, url_secrets(url))
    scheme, userinfo, host, query = parts
    if ":" in userinfo:
        userinfo = f"{userinfo.partition(':')[0]}:{MASK}"
    shown_query = urlencode(
        [(k, MASK if SECRET_QUERY_KEYS.search(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)], safe="*/:"
    )
    return f"{scheme}{userinfo + '@' if userinfo else ''}{host}" + (f"?{shown_query}" if query else "")


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with each secret replaced by ***."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


def secrets_in(words: Iterable[str]) -> list[str]:
    """Secrets inside any URL among `words` (e.g. argv), to mask them in messages."""
    return [secret for word in words if "://" in word for secret in url_secrets(word)]


_KNOWN: set[str] = set()


def remember_secrets(url: str) -> None:
    """Note the secrets of a URL this process uses, so `mask_known` hides them in any message."""
    _KNOWN.update(url_secrets(url))


def mask_known(text: str) -> str:
    """`text` with every secret of every URL this process has used replaced by ***."""
    return mask(text, _KNOWN)


def redact_words(words: Iterable[str]) -> list[str]:
    """argv with every URL in it redacted (e.g. for a printed resume command)."""
    return [redact(word) if "://" in word else word for word in words]
