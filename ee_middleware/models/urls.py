"""Model servers' URLs: the one check of an API root that every client and command taking one applies (the
OpenAI-compatible client, ``--server``, ``--endpoint``, ``EE_SERVER_URLS``), so a typo is refused before any request with
what is wrong in it, not left to the HTTP client's own error (or to none: ``urllib`` quietly drops tabs)."""

from __future__ import annotations

import re

_URL_START = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(//)?")
_HOST_PORT_ONLY = re.compile(r"[\w.-]+:\d+(/.*)?")
_HOST_PUNCTUATION = frozenset("-._~!$&'()*+,;=%")
"""What a host name may hold besides letters and digits (RFC 3986's reg-name: unreserved, sub-delims, %HH)."""


def server_url_problem(url: str, flag: str | None = None) -> str | None:
    """What makes ``url`` no model server's URL, or None when it is one: an http(s) URL with a host (a name, an IPv4
    address or an IPv6 one in brackets) and, if given, a port 1-65535. ``flag``: the repeatable command-line option the
    URL came from, named in the advice for a space (several URLs written as one). Checked here, not left
    to ``urllib.parse``, which raises on an unclosed ``[``, keeps a host with a space or junk after ``]``, and quietly drops
    tabs and newlines (the URL given to the HTTP client would keep them)."""
    import ipaddress
    from urllib.parse import unquote, urlsplit

    odd = next((char for char in url if char.isspace() or not char.isprintable()), None)
    if odd is not None:
        what = "a space" if odd == " " else repr(odd)
        several = f": separate several with commas, or repeat {flag}" if flag else ""
        return f"{what} in it (a URL has none{several})"
    start = _URL_START.match(url)
    scheme = start.group(1) if start else ""
    if start is None or (start.group(2) is None and scheme.lower() not in ("http", "https")):
        guess = f" (http://{url}?)" if _HOST_PORT_ONLY.fullmatch(url) else ""
        return f"it does not start with http:// or https://{guess}"
    if scheme.lower() not in ("http", "https"):
        return f"its scheme {scheme!r} is not http or https"
    if start.group(2) is None:
        return f"no '//' after '{scheme}:'"
    host_port = re.split(r"[/?#]", url[start.end() :], maxsplit=1)[0].rpartition("@")[2]
    if host_port.startswith("["):
        host, closed, port = host_port[1:].partition("]")
        if not closed:
            return "an unclosed '[' in its host (an IPv6 address goes in brackets: http://[::1]:8000/v1)"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address (one goes in brackets: http://[::1]:8000/v1)"
        if port and not port.startswith(":"):
            return f"{port!r} after the ']' of its host (write [IPv6 address]:port)"
        port = port[1:]
    else:
        for bare in (host_port, host_port.rpartition(":")[0]):
            try:
                ipaddress.IPv6Address(bare)
            except ValueError:
                continue
            return "an IPv6 address without brackets (write http://[::1]:8000/v1)"
        host, _, port = host_port.partition(":")
        if not host:
            return "no host"
        if re.search(r"%(?![0-9A-Fa-f]{2})", host):
            return f"a '%' not followed by two hex digits in its host {host!r}"
        odd = next((char for char in unquote(host) if not (char.isalnum() or char in _HOST_PUNCTUATION)), None)
        if odd is not None:  # (%HH decoded: a %20 is a space too)
            return f"{'a space' if odd == ' ' else repr(odd)} in its host {host!r}"
    if port and not (port.isascii() and port.isdigit()):
        return f"its port {port!r} is not a number"
    if port and not 0 < int(port) <= 65535:
        return f"its port {int(port)} is out of range (1-65535)"
    try:  # what urllib itself refuses, in case it refuses more than the checks above
        urlsplit(url).port  # noqa: B018
    except ValueError as exc:
        return str(exc)
    return None


_USERINFO = re.compile(r"""(://)[^/?#\s'"<>]*@""")
"""A URL's ``user:password@`` part: up to its last ``@`` before the path (``urllib`` splits there too). Found from the
``://`` alone, the scheme before it left as it is: a pattern starting at the scheme's first letter tried every word of a
long run of letters, dots and hyphens (``a.a.a...``) to its end, in time growing with the square of its length."""
_QUERY_ITEM = re.compile(r"(?P<lead>[?&;#])(?P<name>[^=&;#?\s'\"<>]+)=(?P<value>[^&;#\s'\"<>]*)")
"""A query parameter and its value, up to the next parameter, the fragment (a spec's ``#MODEL``) or a space; and one
in a fragment (``#access_token=...``, where OAuth's implicit flow puts the token; a spec's ``#MODEL`` has no ``=``)."""
_URL_SECRET_WORDS = frozenset({"sig", "signature", "code", "jwt", "pass", "session", "sessionid", "otp"})
"""Query parameter words that hold a secret in URLs though their names do not say so to the settings' rule
(``sig``/``signature`` of signed URLs, Azure Functions' ``code``, ...)."""


def _secret_query_name(name: str) -> bool:
    """Whether a URL's query parameter ``name`` (percent-decoded) holds a secret: a name the settings' rule takes for one
    (``api_key``, ``key``, ``token``, ``access_token``, ``password``, ``client_secret``, ``X-Amz-Credential``, ...), or a
    word of :data:`_URL_SECRET_WORDS` (``sig``, ``X-Amz-Signature``, ``code``, ...)."""
    from urllib.parse import unquote_plus

    from ee_middleware._toml import _is_secret_name  # the one rule for secret-named settings

    name = unquote_plus(name)
    return _is_secret_name(name) or any(word in _URL_SECRET_WORDS for word in re.split(r"[^a-z0-9]+", name.lower()))


def shown_spec(spec: str) -> str:
    """``spec`` (a model spec such as ``openai:BASE_URL#MODEL``, a sandbox or store spec, a URL, or a text holding URLs)
    as it may be printed, logged, stored in records or written to manifests and reports: in every URL in it, the
    ``user:password@`` part written ``***@`` and the value of every secret-looking query parameter (``api_key``,
    ``key``, ``token``, ``access_token``, ``password``, ``secret``, ``sig``, ...) written ``***``; the rest as it is.
    A URL's query runs to its fragment (a spec's ``#MODEL``), a space or a quote; a malformed URL (a space in its host)
    is masked as well.

    A spec without credentials comes back unchanged (ids derived from the shown spec, as a replay's, keep their values),
    and two specs that differ only in their credentials are shown alike. What makes the requests is the spec itself:
    only what is shown of it is masked.

    >>> shown_spec("openai:http://alice:s3cret@127.0.0.1:8000/v1?api_key=sk-1&api-version=2024#flight-bot")
    'openai:http://***@127.0.0.1:8000/v1?api_key=***&api-version=2024#flight-bot'
    """
    if "://" not in spec:
        return spec

    def item(match: re.Match[str]) -> str:
        secret = match["value"] and _secret_query_name(match["name"])
        return f"{match['lead']}{match['name']}=***" if secret else match[0]

    masked = _USERINFO.sub(r"\1***@", spec)
    start = masked.index("://")  # query parameters after the first URL's start only (not a local path's before it)
    return masked[:start] + _QUERY_ITEM.sub(item, masked[start:])


def api_root(url: str) -> str:
    """``url``, an OpenAI-compatible server's address, as its API root: ``/v1`` added to its path unless it ends so
    (``http://host:8000`` -> ``http://host:8000/v1``), a query (a gateway's ``?api_key=``) kept after it."""
    base, mark, query = url.partition("?")
    base = base.rstrip("/")
    return (base if base.endswith("/v1") else base + "/v1") + mark + query


def shown_url(url: str) -> str:
    """``url`` for a message, credentials kept out: :func:`shown_spec`."""
    return shown_spec(url)
