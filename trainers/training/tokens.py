"""Token ids remembered while rows are fitted: the same ids as the tokenizer's, computed once per text piece.

Fitting a long state (:func:`ee_middleware.models.truncation.tokenize_pair`) renders and tokenizes the prompt many
times: the whole state, then each candidate of the binary searches over dropped turns and shortened messages, then the
chosen fit again. Those texts share almost everything (the system message with the tool schemas, the kept turns), and
a long BFCL state re-tokenized a dozen times was about 80% of the time ``ee train`` spent preparing rows.

:class:`CachedTokenizer` stands in for the tokenizer there. A call ``tokenizer(text, add_special_tokens=False)`` is
answered from the ids of the text's pieces: the text is split where the tokenizer's added tokens (``<|im_start|>``,
``<|im_end|>``, ...) are, as the Rust tokenizer splits it before normalizing and pre-tokenizing each piece on its own,
and each piece is tokenized once (by the tokenizer itself) and remembered. That is exact only for tokenizers whose
pieces do not depend on where they stand: no normalizer, a byte-level pre-tokenizer (no Metaspace, whose "first"
scheme marks only the text's start), deterministic BPE (no dropout), added tokens that strip nothing around them, and
special tokens not split. Other tokenizers get whole texts remembered only (the same text asked again: the state
before fitting, the fit chosen). The first texts are also tokenized whole and compared: a mismatch turns the pieces off.
Every other use of the tokenizer (its chat template, its tokens) goes to the tokenizer itself.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from itertools import chain
from typing import Any

CACHE_ENTRIES = 8192
"""Pieces remembered, least recently used forgotten first (a BFCL row has a few dozen; its neighbours share most)."""
WHOLE_TEXT_ENTRIES = 64
"""Whole texts remembered where pieces are not (a row asks again for few of its own texts; they are long)."""
CHECKED_TEXTS = 8
"""The first texts also tokenized whole and compared with their pieces' ids."""


class CachedTokenizer:
    """``tokenizer`` with ``tokenizer(text, add_special_tokens=False)`` remembered (see the module docstring)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._splitters = _added_token_splitters(tokenizer)
        self._tokens = frozenset(_added_tokens(tokenizer) or ())
        self._entries = CACHE_ENTRIES if self._splitters is not None else WHOLE_TEXT_ENTRIES
        self._unchecked = CHECKED_TEXTS
        self.whole_calls = 0
        """Texts given to the tokenizer itself (pieces or whole texts), for tests and benchmarks."""

    @property
    def by_pieces(self) -> bool:
        """Whether texts are tokenized piece by piece (else whole texts are remembered)."""
        return self._splitters is not None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)

    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        if args or not isinstance(text, str) or set(kwargs) != {"add_special_tokens"} or kwargs["add_special_tokens"] is not False:
            return self.tokenizer(text, *args, **kwargs)
        return {"input_ids": list(self.ids(text))}

    def ids(self, text: str) -> list[int]:
        """The tokenizer's ids of ``text`` without special tokens added (do not change the list returned)."""
        if self._splitters is None:
            return self._remembered(text)
        ids = list(chain.from_iterable(map(self._remembered, self._pieces(text))))
        if self._unchecked > 0:
            self._unchecked -= 1
            if ids != self._tokenized(text):  # not a tokenizer whose pieces stand alone, after all: whole texts from now on
                self._splitters, self._entries = None, WHOLE_TEXT_ENTRIES
                self._cache.clear()
                return self._remembered(text)
        return ids

    def _pieces(self, text: str) -> list[str]:
        assert self._splitters is not None
        pieces = [text]
        for splitter in self._splitters:  # the tokens matched on the raw text first, then those matched after normalizing
            pieces = [part for piece in pieces for part in ((piece,) if piece in self._tokens else splitter.split(piece)) if part]
        return pieces

    def _remembered(self, text: str) -> list[int]:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        ids = self._tokenized(text)
        self._cache[text] = ids
        if len(self._cache) > self._entries:
            self._cache.popitem(last=False)
        return ids

    def _tokenized(self, text: str) -> list[int]:
        self.whole_calls += 1
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _added_tokens(tokenizer: Any) -> dict[str, Any] | None:
    """The tokenizer's added tokens by their text, or ``None`` when it has none to read."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    if not isinstance(decoder, dict):
        return None
    return {str(token): token for token in decoder.values()}


def _added_token_splitters(tokenizer: Any) -> list[re.Pattern[str]] | None:
    """Regexes that split a text at the tokenizer's added tokens, keeping them (those matched on the raw text, then
    those matched after normalizing, leftmost-longest as the Rust tokenizer matches them), or ``None`` when splitting
    there is not known to give the tokenizer's own ids (see the module docstring)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tokens = _added_tokens(tokenizer)
    if backend is None or not tokens or getattr(tokenizer, "split_special_tokens", False):
        return None
    try:
        spec = json.loads(backend.to_str())
    except Exception:  # noqa: BLE001 - a backend that cannot say what it is: whole texts only, as before
        return None
    if spec.get("normalizer") is not None or not _byte_level_only(spec.get("pre_tokenizer")):
        return None
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") not in (None, 0, 0.0):
        return None
    for token in tokens.values():
        if any(getattr(token, flag, True) for flag in ("lstrip", "rstrip", "single_word")):
            return None
    raw = [text for text, token in tokens.items() if not getattr(token, "normalized", True)]
    normalized = [text for text, token in tokens.items() if getattr(token, "normalized", True)]
    return [_splitter(group) for group in (raw, normalized) if group]


def _byte_level_only(pre_tokenizer: Any) -> bool:
    """Whether ``pre_tokenizer`` (its JSON) is ByteLevel, or a sequence of ByteLevel and regex splits."""
    if not isinstance(pre_tokenizer, dict):
        return False
    if pre_tokenizer.get("type") == "Sequence":
        steps = pre_tokenizer.get("pretokenizers") or []
        return bool(steps) and all(_byte_level_only(step) or step.get("type") in ("Split", "Digits") for step in steps)
    return pre_tokenizer.get("type") == "ByteLevel"


def _splitter(tokens: list[str]) -> re.Pattern[str]:
    # longest first: at the leftmost position a token starts, the longest token there (Aho-Corasick leftmost-longest)
    return re.compile("(" + "|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True)) + ")")
