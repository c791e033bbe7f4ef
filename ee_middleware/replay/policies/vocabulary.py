"""What a decision point has seen, sorted by role, for the mutation policy to draw argument values from.

An agent that tries something else at a state uses what the conversation gave it: the order ids
that tools returned, the e-mail address the customer typed, words of the customer's request, a
number close to one it has seen. It does not call ``get_order(order_id="Johnson")`` because the
system prompt mentioned a Mr Johnson. So values are harvested by *source* and *role*:

- **keyed values**: every scalar that a tool observation (parsed as JSON) or an earlier tool call
  put under a name (``"order_id": "#W1234567"``, ``"orders": ["#W…", …]``), so that an argument
  named ``order_id`` can take the order ids seen so far;
- **identifiers**: id-like tokens (``#W1234567``, ``emma_kim_4821``, ``A-1017``, ``NVDA``, long
  digit strings) from user turns, observations and earlier calls, matched to an argument by the
  *shape* of its values (``#W1234567`` has the shape ``#A9999999``);
- **e-mail addresses**, **phone numbers** and **dates**, recognised by their form;
- **free text**: clauses and words of the user's turns;
- **numbers**: from user turns, observations and calls, and under their names.

System prompts are read last, only as a source of plain words when nothing else fits: they describe
the agent, not the situation. Redaction placeholders (``[REDACTED:email]``) are never values.
"""

from __future__ import annotations

import copy
import functools
import json
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

_WORD = re.compile(r"[A-Za-z0-9][\w.\-/]*\w")
_INT = re.compile(r"(?<![\w.])-?\d{1,9}(?![\w.])")
_NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+(?![\w.])")
_TOKEN = re.compile(r"[#@$]?[A-Za-z0-9][\w.\-/@+#:]*[A-Za-z0-9]")
EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
PHONE = re.compile(r"(?<![\w-])\+?\d{1,3}?[ .-]?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}(?![\w-])")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CLAUSE = re.compile(r"[^.?!;:,()\n]+")
_PLACEHOLDER = re.compile(r"\[REDACTED:[^\]]*\]")
_DIGIT = re.compile(r"\d")


def is_placeholder(value: Any) -> bool:
    """Whether ``value`` holds a redaction placeholder (which is never a value to propose or perturb)."""
    return isinstance(value, str) and _PLACEHOLDER.search(value) is not None


_MAX_WORDS = 300
_MAX_JSON_CHARS = 200_000
_STOPWORDS_TEXT = """the and for are but not you your with this that have from they will would there their what about which when make like
    time just him know take into year them some could than then now look only come its over think also back after use two how
    our work first well way even new want because any these give day most can was has had please should were been being did
    does done here more other such very i'm i've it's don't can't my me we is it of to in on at by or an as be if so do
    hi hello thanks thank"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


@functools.lru_cache(maxsize=1 << 16)
def shape(value: str) -> str:
    """The form of a value, character by character: ``#W1234567`` -> ``#A9999999``, ``emma_kim_4821`` -> ``aaaa_aaa_9999``."""
    return "".join("9" if c.isdigit() else "A" if c.isupper() else "a" if c.isalpha() else c for c in value)


@functools.lru_cache(maxsize=1 << 16)
def coarse_shape(value: str) -> str:
    """:func:`shape` with runs collapsed: ``#W1234567`` -> ``#A9``; ``emma_kim_4821`` -> ``a_a_9``."""
    out: list[str] = []
    for c in shape(value):
        if not out or out[-1] != c:
            out.append(c)
    return "".join(out)


@functools.lru_cache(maxsize=1 << 16)
def is_identifier(token: str) -> bool:
    """Whether a token looks like an id, a code or a key rather than a word."""
    if not 2 <= len(token) <= 64 or " " in token or _PLACEHOLDER.search(token):
        return False
    digits = sum(c.isdigit() for c in token)
    letters = sum(c.isalpha() for c in token)
    if digits and (letters or any(c in "#_-/:" for c in token)):
        return True
    if digits == len(token):
        return len(token) >= 4
    if token.isupper() and letters >= 2:
        return True
    return "_" in token.strip("_")


@functools.lru_cache(maxsize=1 << 14)
def stem(name: str) -> str:
    """An argument or field name without id suffixes and plurals: ``order_id``, ``orderId``, ``orders`` -> ``order``."""
    lowered = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).lower()
    lowered = re.sub(r"(_?ids?|_?list|_?number|_?no)$", "", lowered) or lowered
    return lowered[:-1] if lowered.endswith("s") and len(lowered) > 3 else lowered


@dataclass
class Vocabulary:
    """Values seen at a decision point, by role (see the module docstring)."""

    words: list[str] = field(default_factory=list)
    """Words of user turns, tool observations and tool calls (not of system prompts)."""
    strings: list[str] = field(default_factory=list)
    """Whole string argument values of earlier tool calls and of the expert's action."""
    ints: list[int] = field(default_factory=list)
    numbers: list[float] = field(default_factory=list)
    keyed: dict[str, list[Any]] = field(default_factory=dict)
    """Field or argument name (stemmed, see :func:`stem`) -> scalar values seen under it."""
    identifiers: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)
    """Clauses of the user's turns (2-12 words), for free-text arguments."""
    user_words: list[str] = field(default_factory=list)
    prose_words: list[str] = field(default_factory=list)
    """Words of system prompts: the last resort."""
    _memo: ClassVar[dict[tuple[str, bool], Any] | None] = None
    """Set on a :class:`Harvester`'s own vocabulary: what each text added (see :data:`_MEMO_CHARS`)."""

    @classmethod
    def harvest(cls, point: Any) -> Vocabulary:
        """Collect values from a :class:`~ee_middleware.replay.policies.protocol.DecisionPoint`'s state and expert call
        (read afresh: :class:`Harvester` gives the same, reading each message of a trajectory once)."""
        vocab, tool_names = cls(), {}
        for message in point.state:
            vocab._add_message(message, tool_names)
        vocab._add_keyed(point.expert.arguments, "")
        vocab._dedupe()
        return vocab

    def _add_message(self, message: Mapping[str, Any], tool_names: dict[str, str]) -> None:
        role = message.get("role")
        for text in _message_texts(message):
            if role == "system":
                self.prose_words.extend(_words(text))
            elif role == "tool":
                self._add_observation(text, message.get("name") or tool_names.get(str(message.get("tool_call_id")), ""))
            else:
                self._add_text(text, user=role in ("user", "human"))
        for call_id, name, arguments in _message_calls(message):
            tool_names[call_id] = name
            self._add_keyed(arguments, "")

    def keyed_values(self, name: str) -> list[Any]:
        """Values seen under ``name`` (or a name with the same stem)."""
        return self.keyed.get(stem(name), [])

    def unclaimed_identifiers(self) -> list[str]:
        """Identifiers not seen under any name (an order id the user typed after "order" is claimed by ``order``)."""
        claimed = {str(v) for values in self.keyed.values() for v in values}
        return [i for i in self.identifiers if i not in claimed]

    def _add_text(self, text: str, *, user: bool) -> None:
        memo = self._memo
        if memo is None or len(text) > _MEMO_CHARS:
            found = _read_text(text, user)
        else:
            found = memo.get((text, user))
            if found is None:
                if len(memo) >= _MEMO_SIZE:
                    memo.clear()
                found = memo[(text, user)] = _read_text(text, user)
        words, phrases, emails, phones, dates, identifiers, keyed, ints, numbers = found
        self.words.extend(words)
        if user:
            self.user_words.extend(words)
            self.phrases.extend(phrases)
        self.emails.extend(emails)
        self.phones.extend(phones)
        self.dates.extend(dates)
        self.identifiers.extend(identifiers)
        for key, token in keyed:
            self.keyed.setdefault(key, []).append(token)
        self.ints.extend(ints)
        self.numbers.extend(numbers)

    def _add_observation(self, text: str, tool: str) -> None:
        stripped = text.strip()
        if stripped[:1] in ("{", "[") and len(stripped) <= _MAX_JSON_CHARS:
            try:
                self._add_keyed(json.loads(stripped), "")
                return
            except ValueError:
                pass
        if tool and is_identifier(stripped) and not EMAIL.fullmatch(stripped):
            # A bare id answered by find_user_by_email is a user id: key it by the tool's object.
            for noun in _tool_nouns(tool):
                self.keyed.setdefault(noun, []).append(stripped)
        self._add_text(text, user=False)

    def _add_keyed(self, value: Any, key: str, depth: int = 0) -> None:
        if depth > 6 or value is None:
            return
        if isinstance(value, Mapping):
            for name, item in value.items():
                self._add_keyed(item, str(name), depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value[:200]:
                self._add_keyed(item, key, depth + 1)
        elif isinstance(value, bool):
            return
        else:
            if key and not (isinstance(value, str) and (_PLACEHOLDER.search(value) or len(value) > 200)):
                self.keyed.setdefault(stem(key), []).append(value)
            if isinstance(value, int):
                self.ints.append(value)
            elif isinstance(value, float):
                self.numbers.append(value)
            elif isinstance(value, str):
                if 0 < len(value) <= 80 and not _PLACEHOLDER.search(value):
                    self.strings.append(value)
                    if is_identifier(value) and not EMAIL.fullmatch(value) and not PHONE.fullmatch(value):
                        self.identifiers.append(value)
                self._add_text(value, user=False)

    def _dedupe(self) -> None:
        for name in ("words", "user_words", "prose_words"):
            setattr(self, name, list(dict.fromkeys(getattr(self, name)))[:_MAX_WORDS])
        for name in ("strings", "ints", "numbers", "identifiers", "emails", "phones", "dates", "phrases"):
            setattr(self, name, list(dict.fromkeys(getattr(self, name))))
        self.keyed = {k: list(dict.fromkeys(v)) for k, v in self.keyed.items()}


_MEMO_CHARS = 2000
"""A :class:`Harvester` remembers what texts up to this long add (:func:`_read_text`): short ones (names, ids,
statuses inside tool observations) come back again and again, in one trajectory and the next; long ones seldom do."""
_MEMO_SIZE = 1 << 13
_TextValues = tuple[tuple[Any, ...], ...]


def _read_text(text: str, user: bool) -> _TextValues:
    """What :meth:`Vocabulary._add_text` adds for ``text``: words, phrases (``user`` only), e-mail addresses, phones,
    dates, identifiers, (stemmed name, identifier) pairs, ints and numbers, each in the order found."""
    if "[REDACTED:" in text:
        text = _PLACEHOLDER.sub(" ", text)
    # E-mail addresses need an "@", phone numbers and numbers digits: most texts skip those patterns.
    digits = _DIGIT.search(text) is not None
    plain = EMAIL.sub(" ", text) if "@" in text else text
    if digits:
        plain = PHONE.sub(" ", plain)
    phrases = []
    if user:
        for clause in _CLAUSE.findall(text):
            clause = clause.strip()
            if 2 <= len(clause.split()) <= 12:
                phrases.append(clause)
    dates: list[str] = []
    identifiers: list[str] = []
    keyed: list[tuple[str, str]] = []
    previous = ""
    for match in _TOKEN.finditer(plain):
        token = match.group(0).rstrip(".:")
        if DATE.match(token):
            dates.append(token)
        elif is_identifier(token):
            identifiers.append(token)
            if previous and previous.lower() not in STOPWORDS:
                # "my order #W1234567", "account 4021": the word before an id names what it identifies
                keyed.append((stem(previous), token))
        previous = token if token.isalpha() else ""
    return (
        tuple(_words(plain)),
        tuple(phrases),
        tuple(EMAIL.findall(text)) if "@" in text else (),
        tuple(m.group(0).strip() for m in PHONE.finditer(text)) if digits else (),
        tuple(dates),
        tuple(identifiers),
        tuple(keyed),
        tuple(int(m) for m in _INT.findall(text)) if digits else (),
        tuple(float(m) for m in _NUMBER.findall(text)) if digits else (),
    )


class Harvester:
    """:meth:`Vocabulary.harvest` for the successive decision points of a trajectory, reading each message once.

    The state at a trajectory's next step extends the state at its previous one, and a message adds
    the same values wherever it is read, so the values of the messages seen before are kept (with
    copies of those messages, to tell that a new state really extends them) and only the new
    messages are read. Any other state starts afresh. The vocabulary is the same as a fresh
    :meth:`Vocabulary.harvest` gives, value for value and in the same order.
    """

    def __init__(self) -> None:
        self._messages: list[Any] = []
        self._raw = Vocabulary()
        self._tool_names: dict[str, str] = {}
        self._unique = _Unique()
        self._memo: dict[tuple[str, bool], Any] = {}
        self._raw._memo = self._memo

    def harvest(self, point: Any) -> Vocabulary:
        state = point.state
        seen = len(self._messages)
        if len(state) < seen or list(state[:seen]) != self._messages:
            self._messages, self._raw, self._tool_names, self._unique = [], Vocabulary(), {}, _Unique()
            self._raw._memo = self._memo
            seen = 0
        for message in state[seen:]:
            self._raw._add_message(message, self._tool_names)
            self._messages.append(_copy_of(message))
        self._unique.update(self._raw)
        expert = Vocabulary()
        expert._add_keyed(point.expert.arguments, "")
        return self._unique.with_values_of(expert)


_LISTS = tuple(f.name for f in fields(Vocabulary) if f.name != "keyed")
_CAPPED = frozenset(("words", "user_words", "prose_words"))
"""The lists :meth:`Vocabulary._dedupe` keeps the first :data:`_MAX_WORDS` values of."""


class _Unique:
    """The values of a growing :class:`Vocabulary`, each once, in the order first seen: what :meth:`Vocabulary._dedupe`
    makes of its lists, kept up to date as the lists grow instead of rebuilt for every state."""

    def __init__(self) -> None:
        self._lists: dict[str, dict[Any, None]] = {name: {} for name in _LISTS}
        self._keyed: dict[str, dict[Any, None]] = {}
        self._read: dict[str, int] = {}
        """How many values of each of the raw vocabulary's lists have been read (``keyed:<name>`` for keyed ones)."""

    def update(self, raw: Vocabulary) -> None:
        for name, unique in self._lists.items():
            values = getattr(raw, name)
            start = self._read.get(name, 0)
            if start < len(values):
                unique.update(dict.fromkeys(values[start:]))
                self._read[name] = len(values)
        for key, values in raw.keyed.items():
            start = self._read.get("keyed:" + key, 0)
            if start < len(values):
                self._keyed.setdefault(key, {}).update(dict.fromkeys(values[start:]))
                self._read["keyed:" + key] = len(values)

    def with_values_of(self, extra: Vocabulary) -> Vocabulary:
        """The deduplicated vocabulary of what was read plus ``extra`` (``Vocabulary._dedupe`` of both lists together)."""
        lists: dict[str, list[Any]] = {}
        for name, unique in self._lists.items():
            added = getattr(extra, name)
            if added:
                unique = {**unique, **dict.fromkeys(added)}
            values = list(unique)
            lists[name] = values[:_MAX_WORDS] if name in _CAPPED else values
        keyed = {key: list(unique) for key, unique in self._keyed.items()}
        for key, added in extra.keyed.items():
            keyed[key] = list({**self._keyed[key], **dict.fromkeys(added)}) if key in self._keyed else list(dict.fromkeys(added))
        return Vocabulary(**lists, keyed=keyed)


def _copy_of(message: Any) -> Any:
    """A deep copy of a message (plain JSON data: pickled and read back, far faster than ``copy.deepcopy``)."""
    try:
        return pickle.loads(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # noqa: BLE001 - anything pickle cannot copy is copied as before
        return copy.deepcopy(message)


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text) if 2 <= len(w) <= 40 and w.lower() not in STOPWORDS]


def _message_texts(message: Mapping[str, Any]) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [str(part.get("text")) for part in content if isinstance(part, Mapping) and part.get("text")]
    return []


_VERBS = frozenset(
    (
        "get",
        "find",
        "list",
        "search",
        "lookup",
        "look",
        "fetch",
        "show",
        "read",
        "check",
        "query",
        "by",
        "for",
        "with",
        "from",
        "of",
        "the",
        "all",
    )
)


def _tool_nouns(tool: str) -> list[str]:
    """What a tool's answer is about, from its name: ``find_user_by_email`` -> ``["user"]``; ``getOrder`` -> ``["order"]``."""
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", tool).lower().split("_")
    if "by" in words:
        words = words[: words.index("by")]
    return [stem(w) for w in words if w and w not in _VERBS][:1]


def _message_calls(message: Mapping[str, Any]) -> Iterable[tuple[str, str, Any]]:
    """(call id, tool name, arguments) of an assistant message's tool calls."""
    for item in message.get("tool_calls") or ():
        function = item.get("function", item) if isinstance(item, Mapping) else {}
        if not isinstance(function, Mapping):
            continue
        arguments = function.get("arguments", function.get("args"))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                continue
        yield str(item.get("id")), str(function.get("name") or ""), arguments
