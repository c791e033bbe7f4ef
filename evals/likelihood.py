"""Held-out action likelihood: does a model give the expert's next action more probability than the base?

At small scale (a 135M model, minutes of CPU training) task success rarely moves, but the likelihood
of the expert's action given a held-out state does, and measuring it needs one forward pass per
state instead of generation. For every held-out state (a row of a held-out IL dataset: the state,
the tools offered, the expert's call) and every model (the base, and the base with each adapter),
this computes the mean per-token negative log-likelihood of the expert's completion, rendered and
fitted exactly as training renders it (:func:`ee_middleware.models.truncation.tokenize_pair`).

Per model it reports the mean NLL, the paired difference against the base (mean and standard error
over states) and the share of states improved; on a sample of states it also decodes greedily and
reports the parse rate, tool-name match and exact-call match, decoding within the same
``max_length`` (prompt fitted by the same policy, leaving room for the answer). A state whose expert action alone
takes ``max_length`` tokens or more is left out, as training drops such a row; each model's summary counts them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ee_middleware._optional import import_optional
from ee_middleware.errors import ConfigError, ModelLoadError
from ee_middleware.models.chat_template import probe_template
from ee_middleware.models.local import LocalGenerator, load_pretrained, model_context
from ee_middleware.models.parsing import canonical_call
from ee_middleware.models.protocol import Sampling
from ee_middleware.models.truncation import tokenize_pair
from ee_middleware.records import ToolCall

_PURPOSE = "score held-out action likelihood"
BASE = "base"


@dataclass(frozen=True)
class HeldoutState:
    """One held-out decision: the state, the tools offered, and the expert's action (one assistant message)."""

    id: str
    prompt: list[dict[str, Any]]
    completion: list[dict[str, Any]]
    tools: list[dict[str, Any]]

    @property
    def expert_call(self) -> dict[str, Any] | None:
        calls = self.completion[0].get("tool_calls") or []
        return calls[0] if calls else None


@dataclass
class ModelScore:
    """One model's numbers over the held-out states."""

    name: str
    nll: list[float] = field(default_factory=list)
    """Mean NLL per completion token, one value per scored state (in state order)."""
    decoded: int = 0
    parsed: int = 0
    name_match: int = 0
    exact_match: int = 0
    path: str | None = None
    """The adapter folder, as given (made absolute); ``None`` for the base."""
    left_out_too_long: int = 0
    """States left out because their expert action alone takes ``max_length`` tokens or more (training drops them too)."""
    left_out_empty: int = 0
    """States left out because their expert action renders to no token."""
    longest_action_tokens: int = 0
    """Tokens of the longest expert action among all the states given (scored or not)."""
    fitted: int = 0
    """Scored states whose prompt did not fit ``max_length`` whole and was fitted as training fits it (older turns
    dropped, tools listed compactly, a long message shortened in its middle, or cut from the left)."""
    cut_from_the_left: int = 0
    """Of those, the states cut from the left as the last resort: their prompt lost the system message, the tools or the
    task (what ``ee train`` warns of)."""

    @property
    def left_out(self) -> int:
        """States given but not scored."""
        return self.left_out_too_long + self.left_out_empty

    def summary(self, base: ModelScore | None) -> dict[str, Any]:
        """The model's numbers; the counts of states left out are the same in every model's summary."""
        out: dict[str, Any] = {"model": self.name, "states": len(self.nll), "mean_nll": _mean(self.nll)}
        if self.path is not None:
            out["path"] = self.path
        out.update(
            left_out_too_long=self.left_out_too_long,
            left_out_empty=self.left_out_empty,
            longest_action_tokens=self.longest_action_tokens,
            fitted=self.fitted,
            cut_from_the_left=self.cut_from_the_left,
        )
        if base is not None and base is not self:
            diffs = [a - b for a, b in zip(self.nll, base.nll, strict=True)]
            out.update(
                paired_diff=_mean(diffs),
                paired_se=_standard_error(diffs),
                improved_share=sum(d < 0 for d in diffs) / len(diffs) if diffs else 0.0,
            )
        if self.decoded:
            out.update(
                decoded=self.decoded,
                parse_rate=self.parsed / self.decoded,
                name_match=self.name_match / self.decoded,
                exact_match=self.exact_match / self.decoded,
            )
        return out


def load_heldout(path: str | os.PathLike[str]) -> list[HeldoutState]:
    """The held-out IL states in ``path``: a ``heldout/`` folder, a data folder that has one, or a held-out ``il.parquet``.

    Only a file that ``ee datasets build --heldout-...`` marked held out (``ee.split=heldout`` in its Parquet metadata)
    is read: a training ``il.parquet`` holds the rows an adapter was trained on, so scoring it would call them held out.
    """
    import polars as pl

    from ee_middleware.trainers.datasets.split import is_heldout_file

    path = Path(path)
    candidates = [path] if path.suffix == ".parquet" else [path / "il.parquet", path / "heldout" / "il.parquet"]
    if path.is_dir() and (path / "heldout" / "il.parquet").is_file():
        candidates = [path / "heldout" / "il.parquet"]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise ConfigError(
            f"No held-out IL dataset in {path}. Build one with `ee datasets build ... --heldout-share 0.2 --out DATA` "
            "and pass DATA (or DATA/heldout)."
        )
    if not is_heldout_file(dict(pl.read_parquet_metadata(file) or {})):
        raise ConfigError(
            f"{file} is a training dataset, not a held-out one (its Parquet metadata has no ee.split=heldout)"
            f"{f' and {path} has no heldout/il.parquet' if path.is_dir() else ''}: its rows are the ones an adapter "
            "trained on, so their likelihood says nothing about held-out states. Rebuild with a held-out split, "
            "`ee datasets build ... --heldout-share 0.1 --out DATA` (or --heldout-ids/--heldout-app/--heldout-after), "
            "train on DATA and pass --data DATA (its heldout/il.parquet is scored)."
        )
    frame = pl.read_parquet(file)
    states = []
    for row in frame.select("id", "prompt", "completion", "tools").iter_rows(named=True):
        completion = json.loads(row["completion"])
        if len(completion) == 1 and completion[0].get("role") == "assistant":
            states.append(HeldoutState(row["id"], json.loads(row["prompt"]), completion, json.loads(row["tools"] or "[]")))
    if not states:
        raise ConfigError(f"{file} has no held-out states with an expert action.")
    return states


def score_likelihood(
    states: Sequence[HeldoutState],
    base: str | os.PathLike[str],
    adapters: Sequence[str | os.PathLike[str]] = (),
    *,
    max_length: int = 1024,
    decode_sample: int = 0,
    max_new_tokens: int = 128,
    num_threads: int | None = 1,
    device: str = "cpu",
    on_progress: Callable[[str, int, int], None] | None = None,
) -> list[ModelScore]:
    """Scores for the base model and for the base with each adapter, on the same states and tokens.

    A state whose expert action alone takes ``max_length`` tokens or more (or renders to none) is left out, as training
    leaves such a row out; every score counts them (:func:`left_out_text` says it in words). Each adapter is named by
    :func:`adapter_labels`. An adapter trained on another base than ``base`` (:func:`~ee_middleware.models.bases.same_base`:
    other weights or config) is a :class:`ModelLoadError` naming both, before the model is loaded: it would score a
    model nobody trained (``ee adapters promote`` refuses the same pairing)."""
    from ee_middleware.models.bases import other_base_problem

    for adapter in adapters:
        problem = other_base_problem(adapter, base)
        if problem is not None:
            raise ModelLoadError(f"Cannot score {adapter} on {base}: {problem}.")
    torch = import_optional("torch", extra="train", purpose=_PURPOSE)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    base_path = Path(base).expanduser()
    gguf = base_path.name if base_path.suffix == ".gguf" else None
    folder = base_path.parent if gguf else base_path
    context = model_context(folder, gguf)  # from the files, before a GGUF is dequantized (tens of seconds)
    if context is not None and max_length > context[0]:
        raise ConfigError(
            f"--max-length {max_length} is longer than the base model's context ({context[0]} tokens: {context[1]}). "
            f"Set --max-length to {context[0]} or less (states longer than it are fitted as training fits them)."
        )
    tokenizer, model = load_pretrained(folder, gguf_file=gguf, dtype=torch.float32 if device == "cpu" else None)
    names = [BASE, *adapter_labels(adapters)]
    paths = [None, *(str(_absolute(a)) for a in adapters)]
    peft_names = [f"adapter_{i}" for i in range(len(adapters))]  # peft refuses dots, which adapter folder names may have
    model = _with_adapters(model, peft_names, adapters)
    model.to(device)
    model.eval()
    support = probe_template(tokenizer)
    pairs = [tokenize_pair(tokenizer, s.prompt, s.completion, s.tools or None, support, max_length) for s in states]
    keep = [i for i, p in enumerate(pairs) if p.completion_ids and len(p.completion_ids) < max_length]
    left_out = {
        "left_out_too_long": sum(len(p.completion_ids) >= max_length for p in pairs),
        "left_out_empty": sum(not p.completion_ids for p in pairs),
        "longest_action_tokens": max((len(p.completion_ids) for p in pairs), default=0),
        "fitted": sum(pairs[i].fit is not None or pairs[i].left_cut > 0 for i in keep),
        "cut_from_the_left": sum(pairs[i].left_cut > 0 for i in keep),
    }
    scores = []
    for name, path, peft_name in zip(names, paths, [BASE, *peft_names], strict=True):
        score = ModelScore(name, path=path, **left_out)
        with _active(model, peft_name, has_adapters=bool(adapters)):
            for done, index in enumerate(keep, 1):
                score.nll.append(_completion_nll(torch, model, pairs[index].prompt_ids, pairs[index].completion_ids, device))
                if on_progress is not None:
                    on_progress(name, done, len(keep))
            if decode_sample:
                generator = LocalGenerator.from_objects(
                    model, tokenizer, model_name=name, num_threads=num_threads, device=device, context_length=max_length
                )
                for index in keep[:decode_sample]:
                    _decode(generator, states[index], score, max_new_tokens)
        scores.append(score)
    return scores


def report(scores: Sequence[ModelScore]) -> list[dict[str, Any]]:
    """One summary per model, the base first, each paired against the base."""
    base = next((s for s in scores if s.name == BASE), None)
    return [s.summary(base) for s in scores]


def left_out_text(score: ModelScore, max_length: int) -> str:
    """Which of the states given were left out of ``score`` and why, and the ``--max-length`` that keeps them ("" when
    none was): leaving out the longest expert actions skews the mean (and the comparison) toward short calls."""
    if not score.left_out:
        return ""
    given = len(score.nll) + score.left_out
    reasons = []
    if score.left_out_too_long:
        longest = score.longest_action_tokens
        reasons.append(
            (
                score.left_out_too_long,
                f"the expert's action alone takes --max-length {max_length} tokens or more (training leaves such rows out "
                f"too); the longest takes {longest} tokens, so --max-length {longest + 1} or more keeps them all (each "
                "state's prompt is then fitted into the room its action leaves)",
            )
        )
    if score.left_out_empty:
        reasons.append((score.left_out_empty, "the expert's action renders to no token with this base model's chat template"))
    which = f"All {given}" if score.left_out == given else f"{score.left_out} of the {given}"
    if len(reasons) == 1:
        return f"{which} held-out states were left out: for each, {reasons[0][1]}."
    return f"{which} held-out states were left out: " + "; ".join(f"{n} because {why}" for n, why in reasons) + "."


def fitted_text(score: ModelScore, max_length: int) -> str:
    """How many scored states did not fit ``--max-length`` whole ("" when every one fitted): each was fitted as training
    fits it; those cut from the left lost the system message, the tools or the task, so their NLL measures less."""
    if not score.fitted:
        return ""
    scored = len(score.nll)
    said = f"{score.fitted} of the {scored} scored held-out states did not fit --max-length {max_length} whole and were fitted as training fits them"
    if score.cut_from_the_left:
        said += (
            f"; {score.cut_from_the_left} of them were cut from the left, losing the system message, the tools or the task, "
            "so their likelihood measures less than the model sees when served: raise --max-length where the model's context allows"
        )
    return said + "."


def adapter_labels(adapters: Sequence[str | os.PathLike[str]]) -> list[str]:
    """A distinct, stable label per adapter folder: the shortest tail of its path that no other adapter's path ends
    with (``runs/a/adapter`` and ``runs/b/adapter`` are ``a/adapter`` and ``b/adapter``; a lone one is its folder
    name), never :data:`BASE`. The same folder given twice is refused: its numbers would be listed twice."""
    paths = [_absolute(a) for a in adapters]
    seen: dict[Path, int] = {}
    for index, path in enumerate(paths):
        if path in seen:
            raise ConfigError(
                f"--adapter {adapters[index]} names the same folder as --adapter {adapters[seen[path]]} ({path}): give each adapter once."
            )
        seen[path] = index
    labels = []
    for path in paths:
        others = [other.parts for other in paths if other != path]
        for length in range(1, len(path.parts) + 1):
            tail = path.parts[-length:]
            if all(other[-length:] != tail for other in others) and Path(*tail).as_posix() != BASE:
                break
        labels.append(Path(*tail).as_posix())
    return labels


def _completion_nll(torch: Any, model: Any, prompt_ids: list[int], completion_ids: list[int], device: str) -> float:
    ids = torch.tensor([prompt_ids + completion_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    targets = ids[0, 1:]
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return float(losses[len(prompt_ids) - 1 :].mean())


def _decode(generator: LocalGenerator, state: HeldoutState, score: ModelScore, max_new_tokens: int) -> None:
    [choice] = generator.complete(state.prompt, tools=state.tools or None, n=1, sampling=Sampling(temperature=0, max_tokens=max_new_tokens))
    score.decoded += 1
    calls = [c for c in choice.tool_calls() if isinstance(c, ToolCall)]
    if not calls:
        return
    score.parsed += 1
    expert = state.expert_call
    if expert is None:
        return
    function = expert.get("function", {})
    arguments = function.get("arguments")
    arguments = json.loads(arguments) if isinstance(arguments, str) else arguments or {}
    score.name_match += calls[0].name == function.get("name")
    score.exact_match += canonical_call(calls[0].name, calls[0].arguments) == canonical_call(str(function.get("name")), arguments)


def _with_adapters(model: Any, names: Sequence[str], adapters: Sequence[str | os.PathLike[str]]) -> Any:
    if not adapters:
        return model
    peft = import_optional("peft", extra="train", purpose=_PURPOSE)
    for name, adapter in zip(names, adapters, strict=True):
        path = Path(adapter).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise ModelLoadError(f"No LoRA adapter at {path} (no adapter_config.json). Point --adapter at a folder written by `ee train`.")
        try:
            if isinstance(model, peft.PeftModel):
                model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            else:
                model = peft.PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
        except Exception as exc:
            raise ModelLoadError(
                f"Cannot apply the adapter {path}: {type(exc).__name__}: {exc}. Was it trained on this base model?"
            ) from exc
    return model


class _active:
    """Run the base (adapters disabled) or one named adapter."""

    def __init__(self, model: Any, name: str, *, has_adapters: bool) -> None:
        self.model = model
        self.name = name
        self.has_adapters = has_adapters
        self._context: Any = None

    def __enter__(self) -> None:
        if not self.has_adapters:
            return
        if self.name == BASE:
            self._context = self.model.disable_adapter()
            self._context.__enter__()
        else:
            self.model.set_adapter(self.name)

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)


def _absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute and normalised (``..`` and ``.`` removed) without following symlinks: a link's own name
    (a role name like ``candidate``) is what labels it."""
    return Path(os.path.normpath(Path(path).expanduser().absolute()))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _standard_error(values: Sequence[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
