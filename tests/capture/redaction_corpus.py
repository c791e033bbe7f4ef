"""A seeded corpus of planted secrets and PII, run through real LangGraph agents into a real store.

Every kind of secret (API keys, passwords in prose, card numbers, ...) is planted in every place a
run can carry text (tool arguments, tool outputs as text, as JSON inside a string and as nested
data, user, system and model messages, the environment reference, the thread id, the error that
ends a run, a tool error that reaches the user's tracer provider as a span event). The runs go
through ``langchain.agents.create_agent`` graphs wrapped with ``record_experience``; then every file
under the store (Parquet decoded, everything else as bytes) and every span the user's in-memory
exporter received is searched for the planted values, whole or in part (a tail of 4 characters or more
right after a placeholder: a rule that stopped inside the value, ``[REDACTED:secret]&723iAD``). A clean corpus (order ids, dates, prices,
ISO timestamps, UUIDs, ...) goes through the same places and must come out unchanged.

    python -m tests.capture.redaction_corpus --report [--seed 7] [--json]

The test (tests/capture/test_redaction_corpus.py) runs it and asserts 0 found for every kind that
is on by default and 0 false positives.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import string
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLACES = (
    "user_message",
    "system_prompt",
    "model_message",
    "tool_args",
    "tool_output",
    "tool_output_json_string",
    "nested_json",
    "environment",
    "thread_id",
    "run_error",
    "tool_error",
)


def parts_left(parts: tuple[str, ...] | list[str], text: str) -> list[str]:
    """The ``parts`` of planted values found in ``text`` outside its placeholders. A pseudonym tag is 8 random hex
    digits (the store's salt is new per store), so a short digit run such as ``1111`` turns up inside one by chance
    (about once in 13,000 tags); the rest of the text, a tail right after a placeholder included, is searched."""
    from ee_middleware.capture.redaction import PLACEHOLDER

    outside = PLACEHOLDER.sub(" ", text)
    return [part for part in parts if part in outside]


# --- value generators ---------------------------------------------------------------------------

_ALNUM = string.ascii_letters + string.digits


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _luhn_complete(rng: random.Random, prefix: str, length: int) -> str:
    digits = prefix + _rand(rng, string.digits, length - len(prefix) - 1)
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d)
        if i % 2 == 0:  # these double once the check digit is appended
            n = n * 2 - 9 if n * 2 > 9 else n * 2
        total += n
    return digits + str((10 - total % 10) % 10)


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)])
    number = _luhn_complete(rng, prefix, length)
    style = rng.choice(["space", "dash", "plain"])
    if style == "plain":
        return number
    sep = " " if style == "space" else "-"
    groups = [number[0:4], number[4:10], number[10:]] if length == 15 else [number[i : i + 4] for i in range(0, 16, 4)]
    return sep.join(groups)


def _iban(rng: random.Random) -> str:
    country, bban_len = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20)])
    if country in ("GB", "NL"):
        bban = _rand(rng, string.ascii_uppercase, 4) + _rand(rng, string.digits, bban_len - 4)
    else:
        bban = _rand(rng, string.digits, bban_len)
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    iban = f"{country}{check:02d}{bban}"
    if rng.random() < 0.5:
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _phone_us(rng: random.Random) -> str:
    a, e, line = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice(
        [f"+1 ({a}) {e}-{line:04d}", f"({a}) {e}-{line:04d}", f"{a}-{e}-{line:04d}", f"{a}.{e}.{line:04d}", f"+1{a}{e}{line:04d}"]
    )


def _phone_intl(rng: random.Random) -> str:
    d = lambda n: _rand(rng, string.digits, n)  # noqa: E731
    return rng.choice(
        [
            f"+44 20 {d(4)} {d(4)}",
            f"+49 30 {d(4)} {d(4)}",
            f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"+44 7{d(3)} {d(6)}",
            f"+91 98{d(3)} {d(5)}",
        ]
    )


def _email(rng: random.Random) -> str:
    first = rng.choice(["alice", "bob", "chen", "dana", "erik", "fatima", "gus", "josé", "иван", "müller", "o'brien"])
    domain = rng.choice(["example.com", "mail.example.org", "corp.example.co.uk", "пример.рф", "bücher.de"])
    return f"{first}.{_rand(rng, string.ascii_lowercase, 5)}{rng.randint(1, 99)}@{domain}"


def _jwt(rng: random.Random) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    head = part({"alg": "HS256", "typ": "JWT"})
    body = part({"sub": _rand(rng, string.digits, 8), "name": _rand(rng, string.ascii_lowercase, 8)})
    return f"{head}.{body}.{_rand(rng, _ALNUM + '-_', 43)}"


def _private_key(rng: random.Random) -> str:
    lines = [_rand(rng, _ALNUM + "+/", 64) for _ in range(4)]
    return "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----"


def _password(rng: random.Random) -> str:
    return _rand(rng, string.ascii_letters, 5) + rng.choice("!#%&*") + _rand(rng, string.digits, 3) + _rand(rng, string.ascii_letters, 3)


def _aws_secret(rng: random.Random) -> str:
    while True:
        value = _rand(rng, _ALNUM + "+/", 40)
        if any(c.islower() for c in value) and any(c.isupper() for c in value) and any(c.isdigit() for c in value):
            return value


@dataclass(frozen=True)
class Kind:
    """One kind of planted value: how to make one, how it sits in text, whether it is on by default."""

    name: str
    make: Callable[[random.Random], str]
    texts: tuple[str, ...] = ("{v}",)
    default_on: bool = True
    json_keys: tuple[str, ...] = ()
    """Secret-named JSON fields: in structured places the value sits under one of these keys."""


KINDS: tuple[Kind, ...] = (
    Kind("email", _email, ("write to {v} please", "{v}", "contact: {v}")),
    Kind("phone_us", _phone_us, ("call me at {v}", "phone {v}", "{v}")),
    Kind("phone_intl", _phone_intl, ("reach me on {v}", "mobile: {v}")),
    Kind("us_ssn", _ssn, ("SSN {v}", "my social security number is {v}", "{v}")),
    Kind("credit_card", _card, ("card {v}", "charge {v} exp 04/29", "{v}", "charge my card {v} 10 EUR", "{v} 123")),
    Kind("iban", _iban, ("IBAN {v}", "wire it to {v}", "{v}", "wire {v} EUR today", "{v} 2024")),
    Kind("openai_key", lambda r: "sk-proj-" + _rand(r, _ALNUM + "_-", 48), ("key {v}", "{v}")),
    Kind("anthropic_key", lambda r: "sk-ant-api03-" + _rand(r, _ALNUM + "_-", 40), ("use {v}",)),
    Kind("stripe_key", lambda r: r.choice(["sk_live_", "rk_live_", "sk_test_"]) + _rand(r, _ALNUM, 32), ("stripe {v}", "{v}")),
    Kind("aws_access_key_id", lambda r: "AKIA" + _rand(r, string.ascii_uppercase + string.digits, 16), ("id {v}", "{v}")),
    Kind(
        "aws_secret_key",
        _aws_secret,
        ("aws_secret_access_key = {v}", "AWS_SECRET_ACCESS_KEY={v}", "secret access key: {v}", "credentials: AKIAIOSFODNN7EXAMPLE / {v}"),
    ),
    Kind("github_token", lambda r: "ghp_" + _rand(r, _ALNUM, 36), ("token {v}", "{v}")),
    Kind("slack_token", lambda r: "xoxb-" + _rand(r, string.digits, 12) + "-" + _rand(r, _ALNUM, 24), ("{v}",)),
    Kind("google_api_key", lambda r: "AIza" + _rand(r, _ALNUM + "_-", 35), ("maps key {v}",)),
    Kind("bearer_token", lambda r: _rand(r, _ALNUM, 40), ("Authorization: Bearer {v}", "curl -H 'Authorization: bearer {v}'")),
    Kind(
        "basic_auth",
        lambda r: base64.b64encode(f"{_rand(r, string.ascii_lowercase, 6)}:{_password(r)}".encode()).decode(),
        ("Authorization: Basic {v}", "header authorization=Basic {v}"),
    ),
    Kind("jwt", _jwt, ("session {v}", "{v}")),
    Kind("private_key", _private_key, ("{v}", "key file:\n{v}\n")),
    Kind("password_assignment", _password, ("password={v}", "pwd: {v}", "passwd = '{v}'", 'password: "{v}"')),
    Kind(
        "password_prose",
        _password,
        ("my password is {v}", "The password for the VPN is {v}.", "my new password is now {v} ok?", "Password is '{v}'"),
    ),
    Kind(
        "env_assignment",
        _password,
        ("DB_PASSWORD={v}", "export STRIPE_SECRET_KEY={v}", "REDIS_AUTH_TOKEN={v} REDIS_HOST=cache", "SMTP_PASS='{v}'"),
    ),
    Kind(
        "url_credentials",
        _password,
        ("postgres://admin:{v}@db.internal:5432/shop", "fetch https://bob:{v}@api.example.com/v1/orders", "redis://:{v}@cache:6379/0"),
    ),
    Kind(
        "secret_json_field",
        lambda r: _rand(r, _ALNUM, 18),
        ('{{"user": "ann", "password": "{v}"}}', '{{"client_secret": "{v}"}}', '{{"apiKey": "{v}", "region": "eu"}}'),
        json_keys=("password", "client_secret", "apiKey", "db_password", "accessToken"),
    ),
    Kind("ip_address", lambda r: f"203.0.{r.randint(0, 255)}.{r.randint(1, 254)}", ("client ip {v}",), default_on=False),
)

CLEAN_VALUES: tuple[str, ...] = (
    "A-10023",
    "ORD-2026-000123",
    "INV-000481",
    "order 4815162342",
    "tracking 1Z999AA10123456784",
    "SKU 7731-BLK-XL",
    "2026-11-25",
    "25/11/2026",
    "Nov 25, 2026",
    "2026-11-25T14:03:22Z",
    "2026-11-25T14:03:22.123+01:00",
    "$1,299.00",
    "€49.90",
    "USD 12.50",
    "qty 3 at 19.99",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "unix time 1764079402",
    "version 1.2.3",
    "zip 94103-1234",
    "14:30",
    "45%",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "room 1204, floor 12",
    "max_tokens=256",
    "token count: 1532",
    "primary_key: order_id",
    "1234 5678 9012 3456",
    "order 1234 5678 9012 3456 10 units",
    "BE00 5390 0754 7034 2024",
    "ping @support, pip install pkg@1.2.3",
    "boarding_pass={'flight': 'BA117', 'seat': '12A', 'gate': 'B32'}",
    "token: {'symbol': 'USDC', 'decimals': 6}",
    "pin={'lat': 48.8584, 'lng': 2.2945, 'label': 'Eiffel Tower'}",
    "api_key: {'type': 'string', 'description': 'The account key', 'x-sensitive': True, '$comment': 'from the dashboard'}",
    "readings 8808 6866 4578 9268 3281 5617 3289 2553",
    "(see section 4.2)",
    "call #5551234",
    "ref 00012345678901234567",
    "The password is incorrect, please try again.",
    "Reset your password from the account page.",
    "your session token expired at 10:42",
    "Basic plan: $9/month",
    "bearer of this voucher",
    "See https://shop.example.com/orders/A-10023?tab=items",
    "shipping to 1600 Amphitheatre Pkwy, Mountain View",
)
"""Ordinary values that must survive redaction unchanged (the card-like numbers fail Luhn, or are a row of figures; the
objects under ``boarding_pass``, ``token`` and ``pin`` are no secrets, nor is a JSON Schema under ``api_key``)."""


@dataclass
class Plant:
    kind: str
    place: str
    value: str
    text: str
    json_key: str | None = None

    def needles(self) -> set[str]:
        escaped = json.dumps(self.value)[1:-1]
        values = {self.value, escaped, json.dumps(escaped)[1:-1]}  # as text, in JSON, in JSON inside a JSON string
        if self.kind in ("credit_card", "iban"):
            values.add(self.value.replace(" ", "").replace("-", ""))
        if self.kind == "private_key":
            values = set(self.value.splitlines()[1:-1])
        return {v for v in values if v}

    def tails(self) -> re.Pattern[str] | None:
        """A placeholder followed by a tail of the value (4 characters or more, not the whole: ``[REDACTED:secret]&723iAD``
        where a rule stopped inside ``NfngA&723iAD``), in each spelling :meth:`needles` searches: a partial leak."""
        if self.kind == "private_key" or len(self.value) <= 4:
            return None
        tails = {self.value[i:] for i in range(1, len(self.value) - 3)}
        spellings = {spelling for tail in tails for spelling in (tail, json.dumps(tail)[1:-1], json.dumps(json.dumps(tail)[1:-1])[1:-1])}
        return re.compile(r"\[REDACTED:[A-Za-z0-9_.-]+(?::[0-9a-f]{8})?\](?:" + "|".join(map(re.escape, sorted(spellings))) + ")")


@dataclass
class Run:
    place: str
    plants: list[Plant] = field(default_factory=list)
    clean: tuple[str, ...] = ()

    def texts(self) -> list[str]:
        return [p.text for p in self.plants] + list(self.clean)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, p in enumerate(self.plants):
            out[p.json_key or f"note_{i}"] = p.value if p.json_key else p.text
        for i, c in enumerate(self.clean):
            out[f"clean_{i}"] = c
        return out


def build_corpus(seed: int = 7, *, group_size: int = 6) -> tuple[list[Run], list[Run]]:
    """(planted runs, clean runs): every kind in every place, ``group_size`` kinds per run."""
    rng = random.Random(seed)
    planted: list[Run] = []
    for place in PLACES:
        kinds = list(KINDS)
        rng.shuffle(kinds)
        for start in range(0, len(kinds), group_size):
            run = Run(place)
            for kind in kinds[start : start + group_size]:
                value = kind.make(rng)
                structured = place in ("tool_args", "nested_json", "environment", "tool_output_json_string")
                key = rng.choice(kind.json_keys) if kind.json_keys and structured else None
                run.plants.append(Plant(kind.name, place, value, rng.choice(kind.texts).format(v=value), key))
            planted.append(run)
    clean = [Run(place, clean=CLEAN_VALUES + _random_clean(rng)) for place in PLACES]
    return planted, clean


def _random_clean(rng: random.Random) -> tuple[str, ...]:
    """Seeded ordinary values: ids, prices, dates, timestamps, UUIDs, a 16-digit number failing Luhn."""
    card_like = _luhn_complete(rng, "4", 16)
    not_luhn = card_like[:-1] + str((int(card_like[-1]) + 1) % 10)
    return (
        f"ORD-{rng.randint(0, 999999):06d}",
        f"${rng.randint(1, 9999)}.{rng.randint(0, 99):02d}",
        f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
        str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        f"customer {rng.randint(10**9, 10**10 - 1)}",
        f"batch {not_luhn}",
    )


# --- running the corpus through real agents -----------------------------------------------------


def _agent_for(run: Run) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(graph, graph input, run config) for one run: a real create_agent graph with one tool."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import ToolErrorMiddleware
    from langchain_core.messages import AIMessage
    from langchain_core.tools import ToolException, tool

    from ee_middleware.testing import ScriptedChatModel, tool_call

    joined = " ; ".join(run.texts())
    place = run.place

    @tool
    def lookup(query: str, details: dict[str, Any] | None = None) -> Any:
        """Look up a customer record."""
        if place == "run_error":
            raise RuntimeError(f"lookup failed for {joined}")
        if place == "tool_error":
            raise ToolException(f"lookup failed for {joined}")
        if place == "tool_output":
            return "Record found.\n" + "\n".join(run.texts())
        if place == "tool_output_json_string":
            return json.dumps({"record": {"id": "A-1", **run.fields()}})
        if place == "nested_json":
            return {"customer": {"profile": [run.fields()], "status": "active"}}
        return "Record found."

    args: dict[str, Any] = {"query": "customer record"}
    if place == "tool_args":
        args["details"] = run.fields()
    answer = f"Here is what I found: {joined}" if place == "model_message" else "Done, the record is up to date."
    model = ScriptedChatModel(script=[AIMessage(content="", tool_calls=[tool_call("lookup", **args)]), AIMessage(content=answer)])
    middleware = [ToolErrorMiddleware(on_error=lambda exc, request: f"Error: {exc}")] if place == "tool_error" else []
    system = f"You are a support agent. Context: {joined}" if place == "system_prompt" else "You are a support agent."
    graph = create_agent(model, [lookup], system_prompt=system, middleware=middleware)
    user = f"Hi, please update my record. {joined}" if place == "user_message" else "Hi, please update my record."
    configurable: dict[str, Any] = {"thread_id": f"support:{joined}" if place == "thread_id" else uuid.uuid4().hex}
    if place == "environment":
        configurable["ee_environment"] = {"tenant": "acme", "config": run.fields()}
    return graph, {"messages": [("user", user)]}, {"configurable": configurable}


@dataclass
class Outcome:
    planted: Counter[tuple[str, str]] = field(default_factory=Counter)
    found: Counter[tuple[str, str]] = field(default_factory=Counter)
    found_where: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, "store"/"exporter")
    partial: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Of ``found``, the values found only as a tail after a placeholder (:meth:`Plant.tails`)."""
    clean_values: int = 0
    trajectories_stored: int = 0
    capture_failures: list[str] = field(default_factory=list)
    false_positives: list[tuple[str, str]] = field(default_factory=list)  # (place, value)
    runs: int = 0

    def found_default(self) -> int:
        defaults = {k.name for k in KINDS if k.default_on}
        return sum(n for (kind, _), n in self.found.items() if kind in defaults)


def store_texts(root: Path) -> Iterator[str]:
    """The text of every file under a store folder (Parquet decoded row by row)."""
    import polars as pl

    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            yield pl.read_parquet(path).write_ndjson()
        else:
            yield path.read_bytes().decode("utf-8", errors="replace")


def exporter_texts(exporter: Any) -> Iterator[str]:
    for span in exporter.get_finished_spans():
        events = [(e.name, dict(e.attributes or {})) for e in span.events]
        yield json.dumps(
            {"name": span.name, "attributes": dict(span.attributes or {}), "events": events, "status": span.status.description},
            ensure_ascii=False,
            default=str,
        )


def run_corpus(seed: int = 7, *, capture_settings: dict[str, Any] | None = None, workdir: Path | None = None) -> Outcome:
    """Run the planted and the clean corpus; count what is found in plain text."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ee_middleware import LocalExperienceStore, record_experience

    planted, clean = build_corpus(seed)
    outcome = Outcome()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for label, runs in (("planted", planted), ("clean", clean)):
            store = Path(tmp) / label
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            recorder = None
            for run in runs:
                graph, graph_input, config = _agent_for(run)
                agent = record_experience(graph, app="corpus", store=store, tracer_provider=provider, **(capture_settings or {}))
                recorder = agent.recorder
                try:
                    agent.invoke(graph_input, config)
                except RuntimeError:
                    assert run.place == "run_error"
                agent.flush()
                recorder.close()
                outcome.runs += 1
                outcome.capture_failures += recorder.stats.errors
            provider.shutdown()
            outcome.trajectories_stored += LocalExperienceStore(store).trajectories().height
            blobs = {"store": "\n".join(store_texts(store)), "exporter": "\n".join(exporter_texts(exporter))}
            if label == "planted":
                _count_planted(planted, blobs, outcome)
            else:
                _count_clean(clean, blobs, outcome)
    return outcome


def _count_planted(runs: list[Run], blobs: dict[str, str], outcome: Outcome) -> None:
    for run in runs:
        for plant in run.plants:
            outcome.planted[plant.kind, plant.place] += 1
            where = [name for name, blob in blobs.items() if any(n in blob for n in plant.needles())]
            tails = plant.tails()
            partly = [name for name, blob in blobs.items() if name not in where and tails is not None and tails.search(blob)]
            if partly and not where:
                outcome.partial[plant.kind, plant.place] += 1
            where += partly
            if where:
                outcome.found[plant.kind, plant.place] += 1
                for name in where:
                    outcome.found_where[plant.kind, name] += 1


def _count_clean(runs: list[Run], blobs: dict[str, str], outcome: Outcome) -> None:
    stored = blobs["store"]
    for run in runs:
        for value in run.clean:
            outcome.clean_values += 1
            if value not in stored and json.dumps(value, ensure_ascii=False)[1:-1] not in stored:
                outcome.false_positives.append((run.place, value))


# --- report -------------------------------------------------------------------------------------


def _short(place: str) -> str:
    return {"tool_output_json_string": "json_str", "system_prompt": "system", "model_message": "model", "user_message": "user"}.get(
        place, place
    )


def report(outcome: Outcome) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title="Planted secrets/PII found in plain text (found/planted) by kind and place", show_lines=False)
    table.add_column("kind")
    table.add_column("default")
    for place in PLACES:
        table.add_column(_short(place), justify="right")
    table.add_column("total", justify="right")
    table.add_column("store/exporter", justify="right")
    for kind in KINDS:
        cells = []
        for place in PLACES:
            found, planted = outcome.found[kind.name, place], outcome.planted[kind.name, place]
            cells.append(f"[red]{found}[/red]/{planted}" if found else f"0/{planted}")
        total_found = sum(outcome.found[kind.name, p] for p in PLACES)
        total = sum(outcome.planted[kind.name, p] for p in PLACES)
        where = f"{outcome.found_where[kind.name, 'store']}/{outcome.found_where[kind.name, 'exporter']}"
        table.add_row(kind.name, "on" if kind.default_on else "off", *cells, f"{total_found}/{total}", where)
    place_totals = [f"{sum(outcome.found[k.name, p] for k in KINDS)}/{sum(outcome.planted[k.name, p] for k in KINDS)}" for p in PLACES]
    table.add_row("all", "", *place_totals, f"{sum(outcome.found.values())}/{sum(outcome.planted.values())}", "")
    buffer = StringIO()
    console = Console(file=buffer, width=200, force_terminal=False)
    console.print(table)
    console.print(
        f"runs: {outcome.runs}; trajectories stored: {outcome.trajectories_stored}; capture failures: {len(outcome.capture_failures)}; "
        f"planted: {sum(outcome.planted.values())}; found: {sum(outcome.found.values())} "
        f"(default kinds: {outcome.found_default()}; only a tail after a placeholder: {sum(outcome.partial.values())}); "
        f"clean values: {outcome.clean_values}, "
        f"changed by redaction (false positives): {len(outcome.false_positives)}"
    )
    for place, value in outcome.false_positives:
        console.print(f"  false positive in {place}: {value!r}")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="print the table (default)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the counts as JSON instead of a table")
    args = parser.parse_args(argv)
    outcome = run_corpus(args.seed)
    if args.json:
        print(
            json.dumps(
                {
                    "planted": sum(outcome.planted.values()),
                    "found": sum(outcome.found.values()),
                    "found_default_kinds": outcome.found_default(),
                    "found_as_a_tail_only": sum(outcome.partial.values()),
                    "found_by_kind_place": {f"{k}/{p}": n for (k, p), n in sorted(outcome.found.items())},
                    "runs": outcome.runs,
                    "trajectories_stored": outcome.trajectories_stored,
                    "clean_values": outcome.clean_values,
                    "false_positives": outcome.false_positives,
                },
                indent=2,
            )
        )
    else:
        print(report(outcome))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
