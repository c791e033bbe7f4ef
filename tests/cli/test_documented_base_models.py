"""The base model in every documented command is written as the commands take it: the model's folder itself.

``ee train --base-model``, ``ee improve``'s ``base_model``, ``ee serve ... --base`` and ``ee eval likelihood --base`` read a
local folder (or a ``.gguf`` file); the ``local:DIR`` model spec is the form of ``--policy``, ``--model`` and
``--teacher``. docs/experience-model.md wrote ``ee train --schedule experience-model --base-model local:BASE_DIR``,
which ee train refused ("No base model at local:BASE_DIR").
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ee_middleware.models.spec import is_model_spec

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BASE_VALUE = re.compile(r"(?:--base-model|--base)[ =](?P<flag>[^\s`\]|]+)|base_model\s*=\s*\"(?P<toml>[^\"]+)\"")


def _documented_base_models() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for match in BASE_VALUE.finditer(line):
                found.append((f"{page.relative_to(ROOT)}:{number}", match["flag"] or match["toml"]))
    return found


DOCUMENTED = _documented_base_models()


def test_the_pages_document_base_models() -> None:
    assert any(where.startswith("docs/experience-model.md") for where, _ in DOCUMENTED), "the scan finds the page's ee train command"


@pytest.mark.parametrize(("where", "value"), DOCUMENTED, ids=[where for where, _ in DOCUMENTED])
def test_every_documented_base_model_is_the_folder_itself(where: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ee_middleware.trainers.training.errors import BaseModelError
    from ee_middleware.trainers.training.model import resolve_base

    meant = value.split(":", 1)[1] if is_model_spec(value) else value  # the folder the page means
    folder = tmp_path / meant.lstrip("/")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    shown = value if not value.startswith("/") else str(tmp_path) + value
    try:
        source = resolve_base(shown)
    except BaseModelError as exc:
        pytest.fail(f"{where}: ee train refuses the documented base model {value!r} (the folder is {meant!r}): {exc}")
    assert source.folder == folder.resolve() and not is_model_spec(value)
