"""Secrets in storage URLs: find them, and mask them in anything shown or stored.

A password may sit in the user-info part (`user:PW@host`, even with an unescaped `@`, `?`, `/`
or `#` in it) or in a query parameter (`?password=PW`); both are masked everywhere the project
writes a URL or an error that may quote one: console, study attributes, exports, artifacts.

An unescaped password makes a URL ambiguous (`u:pw@h/db?x=a@b` may hold the password
`pw@h/db?x=a`), so the project reads it the widest way: the password runs from the user name's
`:` to the LAST `@`. That reading is the one masked and the one connected with (`normalise_url`
escapes it), so no piece of a password can reach a driver as a host, database or query and
come back in its error; an `@` in a query value must be written `%40`, except after a
`user@host:port`, which holds no user-info password: there every later `@` is escaped, so the URL
connects to that host with that query, and only the query's secrets are masked.
The secrets looked for in messages also include SQLAlchemy's own reading of the unescaped URL
(`make_url`), and every form of each: raw, percent-decoded and -encoded, repr-escaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

MASK = "***"
SECRET_QUERY_KEYS = re.compile(r"pass|pwd|secret|token|key|auth|cred|dsn|conninfo", re.IGNORECASE)  # dsn, conninfo: a whole libpq string
MAX_SECRETS = 64  # secret values of one URL masked one by one in messages; a URL with more is masked whole there
MAX_KEY = 64  # characters of a query key read; a longer key's value is masked unread (a secret's name is short, a hostile text is not)


def _scheme_char(char: str) -> bool:
    return char.isalnum() or char in "_+.-"


def _locate(text: str) -> tuple[str, str, str]:
    """(text before the URL, scheme://, the rest); a text with no scheme is all rest.

    The leftmost `[A-Za-z][\\w+.-]*://`, found from each '://' backwards: the regular expression
    tried every letter of a long word as a start, 16 s for 100,000 letters."""
    separator = text.find("://")
    while separator >= 0:
        start = separator
        while start > 0 and _scheme_char(text[start - 1]):
            start -= 1
        while start < separator and not (text[start].isascii() and text[start].isalpha()):
            start += 1
        if start < separator:
            return text[:start], text[start : separator + 3], text[separator + 3 :]
        separator = text.find("://", separator + 3)
    return "", "", text


def _secret_values(text: str) -> list[tuple[int, int]]:
    """(start, end) of the value after each secret-named key that follows a '?' or '&' in `text`,
    the value running to the next '&': every start is read, since the query's start is ambiguous
    when a password is not escaped. A value inside an earlier one (`?password=a?token=b`) is
    masked with it and not given apart. Linear: the next '&' and '=' come from one backward pass,
    a key is read for at most MAX_KEY characters, and the values given never overlap."""
    next_amp, next_eq = [len(text)] * (len(text) + 1), [len(text)] * (len(text) + 1)
    for index in range(len(text) - 1, -1, -1):
        next_amp[index] = index if text[index] == "&" else next_amp[index + 1]
        next_eq[index] = index if text[index] == "=" else next_eq[index + 1]
    spans = []
    for start, char in enumerate(text):
        if char not in "?&":
            continue
        end, equals = next_amp[start + 1], next_eq[start + 1]
        secret = equals < end and (equals - start - 1 > MAX_KEY or SECRET_QUERY_KEYS.search(unquote_plus(text[start + 1 : equals])))
        if secret and (not spans or (equals + 1 >= spans[-1][1] and equals + 1 != spans[-1][0])):
            spans.append((equals + 1, end))  # a key too long to read is taken for a secret's: masked, never shown
    return spans


def _user_end(rest: str, shown: bool) -> int:
    """The index of the ':' that ends the user name, or -1 if `rest` has no user-info password.
    A user name holds no '/' (SQLAlchemy's reading), so `/path:x@y` is a path, not a user, where
    the URL is connected with. Where it is only shown (`shown`), a '/' before it is taken for a
    mistyped URL's (`postgresql:///u:PW@h/db`, `postgresql//u:PW@h`), whose password was printed."""
    colon = rest.find(":")
    return colon if colon >= 0 and (shown or "/" not in rest[:colon]) else -1


def _userinfo_end(rest: str, shown: bool = False) -> tuple[int, int] | None:
    """(colon, at) of `user:password@`, the password running to the LAST '@': the widest reading,
    so no part of a password is ever taken for the host, the database or the query."""
    colon = _user_end(rest, shown)
    at = rest.rfind("@")
    return (colon, at) if colon >= 0 and at > colon else None


def _host_then_port(rest: str, colon: int) -> bool:
    """Whether the ':' more likely ends a host before its port: `u@h:5432/db?x=a@b` and
    `u@[::1]:5432/db` hold no password, and an '@' in their query stays in the query. An '@'
    before the query (`admin@srv:2024/Spring@db-host/db`) ends a password that starts with digits."""
    _, at, host = rest[:colon].rpartition("@")
    after = rest[colon + 1 :]
    if not at or "@" in after.partition("?")[0]:
        return False
    return host.startswith("[") or re.match(r"\d*(?:[/?]|$)", after) is not None


def _query_secrets(rest: str) -> list[str]:
    """Raw values of secret-named `key=value` pairs after any '?' or '&' (`_secret_values`)."""
    return [rest[start:end] for start, end in _secret_values(rest)]


def _parsed_secrets(url: str) -> list[str]:
    """The password and secret query values SQLAlchemy itself reads from `url`."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - any URL SQLAlchemy refuses has no reading of its own
        return []
    found = [parsed.password or ""]
    for key, value in parsed.query.items():
        if SECRET_QUERY_KEYS.search(key):
            found.extend([value] if isinstance(value, str) else value)
    return found


def _forms(secret: str) -> set[str]:
    """The ways a secret may be written in a message: raw, decoded, encoded, repr-escaped."""
    forms: set[str] = set()
    for plain in {secret, unquote(secret), unquote_plus(secret)}:
        forms |= {plain, quote(plain, safe=""), quote_plus(plain, safe=""), repr(plain)[1:-1], repr(plain + "'\"")[1:-4]}
    return {form for form in forms if form}


def normalise_url(url: str) -> str:
    """The URL with its password percent-encoded, so an '@', '/', '?' or ':' in it cannot move the host."""
    prefix, scheme, rest = _locate(url)
    found = _userinfo_end(rest)
    if prefix or not scheme or found is None:
        return url
    colon, at = found
    if _host_then_port(rest, colon):  # `u@h:5432/db?x=a@b`: SQLAlchemy would read `5432/db?x=a` as a password, `b` as the host
        return f"{scheme}{rest[:colon]}{rest[colon:].replace('@', '%40')}"
    return f"{scheme}{rest[:colon]}:{quote(unquote(rest[colon + 1 : at]), safe='')}@{rest[at + 1 :]}"


def url_secrets(url: str) -> list[str]:
    """Every secret in `url` (or in a text holding one, e.g. `--storage=URL`), in every reading
    and each form it may appear in a message; longest first, so no mask is partial."""
    prefix, scheme, rest = _locate(url)
    found = _query_secrets(rest) + _parsed_secrets(url[len(prefix) :])
    userinfo = _userinfo_end(rest, _shown_widest(scheme))
    if userinfo is not None:
        found.append(rest[userinfo[0] + 1 : userinfo[1]])
    if scheme:
        found += _parsed_secrets(normalise_url(url[len(prefix) :]))
    if len(found) > MAX_SECRETS:  # thousands of `&key=`: masked whole in a message, or each message check costs the URL's length
        found = [rest]
    forms = {form for secret in found if secret for form in _forms(secret)}
    return sorted(forms, key=lambda form: (-len(form), form))


def redact(url: str) -> str:
    """The URL with every password and secret query value replaced by ***, safe to show and store.

    Masked by position, never by searching for the secret's text: a password equal to the user
    name, the host or the database (`optuna:optuna@db/optuna`) would otherwise be masked there
    too, and the mask would tell it. The user-info password is masked up to the last '@' (the
    widest reading, which holds every other reading's password); a query value is masked after
    every '?' or '&' whose key names a secret (the widest reading of the query too). A text that
    is not a URL comes back as it is, unless it holds something shaped like `user:password@`."""
    prefix, scheme, rest = _locate(url)
    userinfo = _userinfo_end(rest, _shown_widest(scheme))
    if userinfo is not None and scheme and not prefix and _host_then_port(rest, userinfo[0]):
        userinfo = None  # connected as host and port (`normalise_url`): its secrets are in the query
    head, tail = ("", rest) if userinfo is None else (f"{rest[: userinfo[0]]}:{MASK}@", rest[userinfo[1] + 1 :])
    location, question, query = tail.partition("?")
    return f"{prefix}{scheme}{head}{location}{_masked_query(question + query)}"


def _shown_widest(scheme: str) -> bool:
    """Whether a '/' before `user:x@` is read as a mistyped URL's when shown: for all but an
    SQLite file's path, which may hold ':' and '@' (`sqlite:////runs/a:1@2.db`: masking `1` would
    mask it in every message)."""
    return not scheme.lower().startswith("sqlite")


def shown_name(name: str) -> str:
    """A study name as shown: as typed, unless it is a URL (a scheme's '://') holding a password.
    `exp:v2@gpu` is a name, not `user:password@host`: masking it would hide a name a user chose
    and can only type as it is; the settings refuse a new name this would change."""
    return redact(name) if "://" in name else name


def _masked_query(query: str) -> str:
    """`?...` with the value after each secret-named key masked, at every '?' or '&' (as
    `_query_secrets` reads them), so `?a=1?password=s` shows no `s` either."""
    shown, kept_to = [], 0
    for begin, end in _secret_values(query):
        shown.append(query[kept_to:begin] + MASK)
        kept_to = end
    return "".join(shown) + query[kept_to:]


def message_secrets(url: str) -> list[str]:
    """The secrets of `url` to mask in a message (a driver's error, a printed argument): every
    form `url_secrets` finds but those that are also a piece of the URL's shown, public parts.
    Masking `test` in a message when the database is named `test` as well would tell the
    password; a text equal to a public part tells nothing when it stays."""
    shown = redact(url)
    return [secret for secret in url_secrets(url) if secret not in shown]


MAX_URLS_READ = 4  # URLs of one message read to its end by `_spanning_secrets`: each reading costs the rest of the text


def _spanning_secrets(text: str) -> list[str]:
    """The secrets of each URL in `text` (the first MAX_URLS_READ), each read to the text's end: a
    password typed with a space in it (`u:S3CRET pw@h`) spans two words, so a word-by-word
    reading would show its first word."""
    found: list[str] = []
    rest = text
    for _ in range(MAX_URLS_READ):
        _, scheme, rest = _locate(rest)
        if not scheme:
            break
        found += message_secrets(scheme + rest)
    return found


def clip(text: str, limit: int, secrets: Iterable[str] = ()) -> str:
    """`text` with its URLs redacted and `secrets` masked, then cut to `limit` characters: in that
    order, since a cut can drop the '@' that marks a password, and a cut password is no longer
    found by the mask."""
    masked = mask(text, [*secrets, *_spanning_secrets(text)])
    shown = " ".join(redact(word) if "://" in word or "@" in word else word for word in masked.split(" "))
    return mask_known(shown)[:limit]


def redact_value(value: object) -> object:
    """`value` with every string in it (in lists, tuples and mappings too) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(item) for item in value)
    if isinstance(value, dict):
        return {redact_value(key): redact_value(item) for key, item in value.items()}
    return value


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with each secret replaced by ***."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


def secrets_in(words: Iterable[str]) -> list[str]:
    """Secrets inside any URL among `words` (e.g. argv), to mask them in messages."""
    return [secret for word in words if "://" in word for secret in message_secrets(word)]


_KNOWN: set[str] = set()


def remember_secrets(url: str) -> None:
    """Note the secrets of a URL this process uses, so `mask_known` hides them in any message."""
    _KNOWN.update(message_secrets(url))


def mask_known(text: str) -> str:
    """`text` with every secret of every URL this process has used replaced by ***."""
    return mask(text, _KNOWN)


def redact_words(words: Iterable[str]) -> list[str]:
    """argv with every URL in it redacted (e.g. for a printed resume command)."""
    return [redact(word) if "://" in word else word for word in words]
