"""The em teacher's copy check (:func:`~ee_middleware.trainers.datasets.em.copies`) on values that hold spaces: one
value of the observation is what the tool wrote as one (a path, a title, a commit subject), however many words it has."""

from __future__ import annotations

import json

import pytest

from ee_middleware.trainers.datasets.em import _normal, _normal_marked, copies

PWD = "/Users/jane/Library/Mobile Documents/com~apple~CloudDocs/My Project Files/quarterly reports"
SUBJECT = "Handle empty responses from the upstream billing service gracefully"
LOG = (
    f"3f9c2ab (HEAD -> main, origin/main) {SUBJECT}\n"
    "9d41e07 Retry the ledger export when the warehouse connection drops mid-batch\n"
    "b72c1f0 Move the invoice renderer to the shared templates package for reuse\n"
)
TITLE = "Configure nginx reverse proxy for websocket upgrades behind a load balancer"
QUESTION = json.dumps({"id": 48213, "title": TITLE, "score": 412, "tags": ["nginx", "websocket", "load-balancing"]})
WINDOWS = json.dumps({"path": r"C:\Program Files\Common Files\Microsoft Shared\Office Tools\Web Server Extensions", "exists": True})


def _call(name: str, **arguments: object) -> str:
    return json.dumps({"tool": name, "arguments": arguments})


@pytest.mark.parametrize(
    ("reasoning", "observation", "context"),
    [
        (f"The shell is in {PWD}, the user's synced project folder.", PWD, "Where am I?\n" + _call("bash", command="pwd")),
        (
            f"The last commit on main is titled '{SUBJECT}', so the fix landed.",
            LOG.splitlines()[0],
            _call("bash", command="git log -1 --oneline"),
        ),
        (f"The newest of the three commits is '{SUBJECT}'.", LOG, _call("bash", command="git log -3 --oneline")),
        (f'Question 48213 exists; its title is "{TITLE}", a well-scored one.', QUESTION, _call("get_question", id=48213)),
        (
            r"The folder C:\Program Files\Common Files\Microsoft Shared\Office Tools\Web Server Extensions exists.",
            WINDOWS,
            _call("stat", path="x"),
        ),
    ],
    ids=["macos-path-with-spaces", "commit-subject", "commit-subject-of-three", "json-title", "windows-path-in-json"],
)
def test_naming_one_value_that_holds_spaces_is_no_copy(reasoning: str, observation: str, context: str) -> None:
    """Each was flagged teacher_copied (its reasoning replaced by the template): the value's words counted as values."""
    assert not copies(reasoning, observation, context=context)


@pytest.mark.parametrize(
    ("reasoning", "observation"),
    [
        # the commit subject and the next commit's line: a run across a line break
        (f"It printed {SUBJECT} 9d41e07 Retry the ledger export when the warehouse connection drops", LOG),
        # the title and the fields after it: a run across the JSON's structure
        (f"It returned title: {TITLE}, score: 412, tags: [nginx, websocket, load-balancing]", QUESTION),
        # JSON-wrapped output the teacher unescaped: its lines, each a value
        (
            "It printed total 3 -rw-r--r-- 1 alex staff 1259 Mar 4 10:00 report.csv -rw-r--r-- 1 alex staff 88 Mar 4 10:01 notes.txt",
            json.dumps(
                {
                    "stdout": "total 3\n-rw-r--r-- 1 alex staff 1259 Mar 4 10:00 report.csv\n-rw-r--r-- 1 alex staff 88 Mar 4 10:01 notes.txt\n",
                    "exit_code": 0,
                }
            ),
        ),
        # a prose observation quoted over its sentences
        (
            "It says the tool creates it with default values and prints a warning. Existing files are never overwritten unless --force is given.",
            "Usage notes. If the file does not exist, the tool creates it with default values and prints a warning. "
            "Existing files are never overwritten unless --force is given. Logs go to standard error.",
        ),
    ],
    ids=["log-lines", "json-fields", "unescaped-json-stdout", "prose-sentences"],
)
def test_quoting_across_the_observations_values_is_still_a_copy(reasoning: str, observation: str) -> None:
    assert copies(reasoning, observation, context="Show me.\n" + _call("run", command="x"))


def test_the_observation_is_normalised_as_the_reasoning_is() -> None:
    """The observation's values are marked on its normalised text, which must be the reasoning's normal form exactly
    (else a quote would not match): escapes, quotes, whitespace, case alike."""
    for text in [LOG, QUESTION, WINDOWS, 'a " b', "x\\ny \\\\n z\t", "\u201cStra\u00dfe\u201d , 'q'  (x86)", PWD]:
        normal, marks = _normal_marked(text)
        assert normal == _normal(text) and len(marks) == len(normal)
