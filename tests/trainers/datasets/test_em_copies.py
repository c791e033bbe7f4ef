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


ISSUES = json.dumps(
    [
        {"number": 4121, "title": "Crash when exporting empty ledgers", "state": "open", "user": {"login": "mkoval"}, "comments": 3},
        {
            "number": 4122,
            "title": "Retry warehouse export on dropped connection",
            "state": "open",
            "user": {"login": "jane-d"},
            "comments": 11,
        },
        {"number": 4123, "title": "Move invoice renderer to shared templates", "state": "open", "user": {"login": "alexr"}, "comments": 0},
    ]
)
PARAGRAPH = (
    "The exporter reads every invoice from the warehouse, converts the amounts to the ledger currency using the daily rate "
    "table, and writes one CSV per customer into the reports folder; failed rows are retried three times before the run is "
    "marked as partial and an alert is sent to the on-call channel."
)
LOG_LINE = "2024-03-04 10:00:01 ERROR [worker-3] Failed to connect to database at db.internal:5432 after 3 retries: connection refused"


@pytest.mark.parametrize(
    ("reasoning", "observation", "context"),
    [
        (
            "The API returned " + ISSUES[:330],
            json.dumps({"stdout": ISSUES, "stderr": "", "exit_code": 0}),
            _call("bash", command="curl -s https://api.example.com/issues"),
        ),
        ("It returned " + ISSUES[:330], json.dumps([{"type": "text", "text": ISSUES}]), _call("list_issues", repo="acme/ledger")),
        (
            "The README says " + PARAGRAPH[:330],
            json.dumps({"content": "# Exporter\n\n" + PARAGRAPH + "\n"}),
            _call("read_file", path="README.md"),
        ),
        ("The log says " + LOG_LINE, json.dumps({"stdout": LOG_LINE + "\n", "exit_code": 0}), _call("bash", command="tail -1 app.log")),
    ],
    ids=["curl-json-body-in-stdout", "mcp-text-part", "file-content-as-json-string", "log-line-in-stdout"],
)
def test_quoting_one_line_of_a_json_wrapped_output_is_a_copy(reasoning: str, observation: str, context: str) -> None:
    """None was flagged: inside a JSON string only line breaks separated values, so a quote within one of its lines (the
    whole of a one-line output) was one value named. The text's fields count there as they do in plain text."""
    assert copies(reasoning, observation, context=context)
    assert not copies("The API answered with three open issues; 4122 has the most comments.", observation, context=context)


@pytest.mark.parametrize(
    "observation",
    [
        f"[2024-03-04 10:00:01] INFO uploaded {PWD}/q3 summary.pdf\n[2024-03-04 10:00:02] INFO done\n",
        f"[12] uploaded {PWD}/q3 summary.pdf in 42s\n",
    ],
    ids=["bracketed-time", "bracketed-number"],
)
def test_a_log_opening_with_a_bracket_and_a_digit_is_text(observation: str) -> None:
    """Read as JSON, whose every space outside strings separates values, naming one path with spaces from it was a copy."""
    assert not copies(f"The file {PWD}/q3 summary.pdf was uploaded.", observation, context=_call("bash", command="tail -2 sync.log"))
    assert copies("It printed " + observation.replace("\n", " "), observation)


def test_short_values_the_call_holds_only_inside_a_large_blob_cost_a_lookup_each() -> None:
    """A run of short values (small numbers) the teacher quoted, with a call carrying a 115 KB hex blob holding them only
    inside its words: each value scanned every place it occurs in the blob, 140-330 ms a row; now one split of the
    call. Timed (best of 3, a wide bound for a loaded machine): the row must stay a few ms."""
    import random
    import time

    rng = random.Random(0)
    blob = "".join(rng.choice("0123456789abcdef") for _ in range(115_000))
    context = "Store it.\n" + _call("put_blob", data=blob)
    numbers = json.dumps([rng.choice([0, 1, 2, 3]) for _ in range(600)])[:1500]
    reasoning = "The values are " + numbers[1:400]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        assert copies(reasoning, numbers, context=context)
        best = min(best, time.perf_counter() - start)
    assert best < 0.05, f"{best * 1000:.0f} ms"


@pytest.mark.parametrize(
    "path",
    [
        r"C:\Users\nina\Documents\reports\tax returns 2023\travel expenses final.pdf",
        r"D:\temp\tools\repos\new folder\release notes for the team.txt",
    ],
    ids=["users-nina-reports-tax", "temp-tools-repos-new"],
)
def test_naming_one_windows_path_whose_folders_start_with_n_r_or_t_is_no_copy(path: str) -> None:
    """JSON writes each backslash escaped (``\\\\``): its second backslash and the folder's first letter (``\\nina``,
    ``\\reports``, ``\\tax``) were read as an escaped line break or tab, so the one path counted as several values."""
    observation = json.dumps({"path": path, "size": 48213, "owner": "jane"})
    assert not copies(f"The file is at {path}, ready to open.", observation, context="find the file")


def test_an_escaped_line_break_after_an_escaped_backslash_still_separates() -> None:
    """``\\\\`` then ``\\n`` (a path ending in a backslash, then a new line) is a backslash and a line break."""
    observation = json.dumps({"stdout": "C:\\tools\\\nbuild finished in 12.4 seconds with 0 warnings and 0 errors\n"})
    _, flags = _normal_marked(observation)
    text, _ = _normal_marked(observation)
    assert flags[text.index("build") - 1] == "1"
