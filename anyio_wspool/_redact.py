"""Keeping secrets out of reprs, log records and error text (guarantee 9).

Two tools: :func:`redact_url` masks the password and the query values of one
URL, :func:`redact_text` does the same for every URL inside a longer text (an
exception message, a traceback). :func:`install_log_redactor` applies them to
the records of another library's logger (httpx writes every request's full URL
at INFO).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

__all__ = ("describe_error", "install_log_redactor", "redact_text", "redact_url", "scrub_error")

MASK = "***"

# scheme://anything-up-to-whitespace-or-quote; good enough to find URLs in text
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# h11's "Illegal header value b'Bearer ...'": the value, quoted, after the words
_HEADER_VALUE_IN_TEXT = re.compile(r"(header value:? )b?(['\"])(?:\\.|(?!\2).)*\2", re.IGNORECASE)


def redact_url(url: object) -> str:
    """Return ``url`` (a ``str``, or a URL object) with its password and query values masked.

    User names, hosts, paths and query *names* are kept, so that the text still
    says where the pool connects. Text that does not parse as a URL is returned
    with every ``:password@`` and its whole query masked, erring on the side of
    hiding.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        text = re.sub(r":[^:/@\s]*@", ":" + MASK + "@", text)
        return re.sub(r"\?[^\s#]*", "?" + MASK, text)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if sep else f"{user}@{hostport}"
    query = parts.query
    if query:
        # A query item without "=" is a bare token (``?eyJ...``): masked whole.
        query = "&".join(
            f"{name}={MASK}" if sep else MASK
            for name, sep, _ in (item.partition("=") for item in query.split("&"))
        )
    fragment = parts.fragment
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str) -> str:
    """Mask the secrets of every URL found in ``text``, and quoted header values."""
    if "eader value" in text or "EADER VALUE" in text:
        text = _HEADER_VALUE_IN_TEXT.sub(lambda match: match.group(1) + MASK, text)
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def scrub_error(exc: BaseException) -> None:
    """Mask, in place, the secrets in the message of ``exc`` and of the errors chained to it.

    For errors the pool passes on from a library that quotes what it refused
    (h11 quotes an illegal header value, which an ``httpx.Auth`` flow may have
    set at request time, where no check at creation can see it). The type, the
    traceback and the rest of the text are kept.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        args = []
        for arg in error.args:
            if isinstance(arg, BaseException):
                pending.append(arg)
            elif not isinstance(arg, int | float | bool | None):
                text = str(arg)
                masked = redact_text(text)
                if masked != text:
                    arg = masked
            args.append(arg)
        error.args = tuple(args)
        for chained in (error.__cause__, error.__context__):
            if chained is not None:
                pending.append(chained)


def describe_error(exc: BaseException, *, with_traceback: bool = False) -> str:
    """``Type: message`` of ``exc`` (and optionally its traceback), URLs redacted.

    Used instead of ``exc_info=`` in the pool's log records, because a logging
    handler would format the raw exception text, secrets included.
    """
    if with_traceback:
        text = "".join(traceback.format_exception(exc))
    else:
        text = "".join(traceback.format_exception_only(exc)).strip()
    return redact_text(text)


class UrlLogRedactor(logging.Filter):
    """Masks URL secrets in the records of a library's logger.

    httpx logs ``HTTP Request: GET <full url> ...`` at INFO for every request,
    a WebSocket upgrade included, with the URL's password and query (where
    services put their API keys). While a pool is open this filter sits on that
    logger and rewrites the URL arguments of each record before any handler
    sees them; every other part of the record is left alone.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(_redact_arg(arg) for arg in args)
        elif isinstance(args, dict) and args:
            record.args = {key: _redact_arg(arg) for key, arg in args.items()}
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg)
        return True


def _redact_arg(arg: object) -> object:
    if isinstance(arg, int | float | bytes) or arg is None:
        return arg
    text = str(arg)
    masked = redact_text(text)
    return masked if masked != text else arg


_redactor = UrlLogRedactor()
_installed: Counter[str] = Counter()
_install_lock = threading.Lock()


class RedactorHandle:
    """Takes the filter off its logger again (see :func:`install_log_redactor`)."""

    __slots__ = ("_done", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._done = False

    def remove(self) -> None:
        if self._done:
            return
        self._done = True
        with _install_lock:
            _installed[self._name] -= 1
            if _installed[self._name] == 0:
                del _installed[self._name]
                logging.getLogger(self._name).removeFilter(_redactor)


def install_log_redactor(name: str) -> RedactorHandle:
    """Put the redacting filter on logger ``name`` until the handle is removed.

    Reference-counted, so that several pools (in several threads) share one filter.
    """
    with _install_lock:
        if _installed[name] == 0:
            logging.getLogger(name).addFilter(_redactor)
        _installed[name] += 1
    return RedactorHandle(name)
