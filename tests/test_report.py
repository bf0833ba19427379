"""The morning report from a recorded run: a real launcher with three scripted agents (two roles)
on a real repository, whose backlog has every outcome — a landing, a merge conflict and the
conflict task that lands both sides, a task done without a change, one that fails after a retry,
one left pending behind it, and an id and title too long for any column. The run is recorded once
for the module (about 5 s); the HTML is rendered in a real headless browser (Debian's chromium),
skipped with the reason when there is none, failed instead when STIGMERGY_REQUIRE_CHROMIUM=1
(`.ci/run` installs chromium and sets it)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from conftest import cli, landed_ids, make_repo, set_config
from harness import report
from harness.colony import Colony
from harness.tasks import Task

APP = "def greet(name):\n    return 'hello ' + name\n"
LONG = "a-very-long-task-id-that-cannot-fit-in-any-column-of-the-report-x"[:64]
NASTY = 'Escape <img src=x onerror="alert(1)"> & <script>alert(2)</script> a title far too long for one line'
BROKEN = "A task the model cannot do, with a title much longer than the eighty columns of a terminal"
OLD = "'hello ' + name"
SCRIPT = [
    {"match": "^slow-title$", "actions": [{"replace": {"path": "app.py", "old": OLD, "new": "'hello ' + name.title()"}},
                                          {"sleep": 4}, {"finish": "titled"}]},
    {"match": "^fast-punct$", "actions": [{"replace": {"path": "app.py", "old": OLD, "new": "'Hello, ' + name + '!'"}},
                                          {"finish": "punctuated"}]},
    {"match": "^conflict-", "actions": [
        {"write": {"path": "app.py", "content": "def greet(name):\n    return 'Hello, ' + name.title() + '!'\n"}},
        {"finish": "kept both"}]},
    {"match": "^noop$", "actions": [{"finish": "nothing to do: greet exists already"}]},
    {"match": f"^{LONG}$", "actions": [{"write": {"path": "long.txt", "content": "long\n"}}, {"finish": "ok"}]},
    # "broken" matches no entry: NoScriptMatch, released once, then failed (max_attempts 2)
]
BACKLOG = [
    Task(id="slow-title", title="Title-case names", priority=90),  # held 4 s: fast-punct lands first
    Task(id="fast-punct", title="Punctuate greeting", priority=85),
    Task(id="noop", title="Make sure greet exists", priority=70),
    Task(id=LONG, title=NASTY, priority=65),
    Task(id="broken", title=BROKEN, priority=60),
    Task(id="blocked", title="Waits on the broken task", priority=55, depends_on=["broken"]),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Colony]:
    """One recorded run for the whole module: the launcher with --until-empty, to its end."""
    root = tmp_path_factory.mktemp("recorded")
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("STIGMERGY_")]:
            mp.delenv(var)  # not the colony of whoever runs the suite (conftest's no_stigmergy_env)
        colony = set_config(Colony.init(make_repo(root / "target", {"app.py": APP})), max_attempts=2,
                            retry_backoff=0.2, retry_backoff_max=0.2)
        (root / "script.yaml").write_text(yaml.safe_dump(SCRIPT, sort_keys=False))
        colony.add_many(BACKLOG)
        proc = subprocess.run([sys.executable, "-m", "harness", "--repo", str(colony.repo), "--model",
                               f"scripted:{root / 'script.yaml'}", "--workspaces", str(root / "ws"), "--agents", "3",
                               "--roles", "coder=2,merger=1", "--until-empty", "--sandbox", "none"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield colony


def by_id(r: dict) -> dict[str, dict]:
    return {t["id"]: t for t in r["tasks"]}


def test_every_task_has_its_outcome_and_times(run: Colony) -> None:
    proc = cli("report", "--json", "--repo", str(run.repo), check=True)
    r = json.loads(proc.stdout)
    tasks = by_id(r)
    conflict = next(t for t in tasks.values() if t["kind"] == "merge_conflict")
    assert set(tasks) == {t.id for t in BACKLOG} | {conflict["id"]}  # every task, none dropped
    outcomes = {tid: t["outcome"] for tid, t in tasks.items()}
    assert outcomes == {"fast-punct": "landed", LONG: "landed", conflict["id"]: "landed",
                        "slow-title": "resolved", "noop": "unchanged", "broken": "failed", "blocked": "pending"}
    assert conflict["resolves"] == "slow-title" and tasks["slow-title"]["via"] == conflict["id"]
    assert tasks["slow-title"]["conflict"] == conflict["id"]
    assert sorted(landed_ids(run.repo)) == sorted(["fast-punct", LONG, conflict["id"]])
    # the no-op completion: done, nothing landed, and why
    noop = tasks["noop"]
    assert noop["status"] == "done" and noop["commit"] is None and "done without a change" in noop["last_note"]
    assert tasks["broken"]["claims"] == 2 and "NoScriptMatch" in tasks["broken"]["last_note"]
    assert tasks["blocked"]["claims"] == 0 and tasks["blocked"]["first_claim"] is None
    for t in tasks.values():
        if t["outcome"] != "pending":
            assert t["first_claim"] <= t["finished"]
            assert t["duration_s"] == pytest.approx(t["finished"] - t["first_claim"])
            assert t["hours"] == pytest.approx(t["duration_s"] / 3600)
    assert tasks["slow-title"]["duration_s"] >= 4  # held through the sleep, then waited on its conflict task
    assert r["outcomes"] == {"landed": 3, "resolved": 1, "unchanged": 1, "failed": 1, "pending": 1}
    assert report.summary_line(r).startswith("4 landed, 1 done without change, 1 failed, 1 still pending")

    # every attempt, from its claim to how it ended
    attempts = r["attempts"]
    assert len(attempts) == sum(t["claims"] for t in tasks.values())
    ended = sorted((a["task"], a["outcome"]) for a in attempts)
    assert ended == sorted([("fast-punct", "landed"), (LONG, "landed"), (conflict["id"], "landed"),
                            ("slow-title", "conflict"), ("noop", "unchanged"), ("broken", "released"),
                            ("broken", "failed")])
    assert all(a["start"] <= a["end"] for a in attempts)
    assert r["conflicts"] == [{"task": "slow-title", "agent": tasks["slow-title"]["agents"][0],
                               "ts": r["conflicts"][0]["ts"], "conflict_task": conflict["id"], "outcome": "landed",
                               "resolved_by": conflict["agents"][-1], "commit": conflict["commit"],
                               "finished": conflict["finished"]}]
    # roles from the heartbeats, models and spend from the ledgers
    assert r["roles"] == {"coder-01": "coder", "coder-02": "coder", "merger-01": "merger"}
    assert {k: v["agents"] for k, v in r["by_role"].items()} == {"coder": 2, "merger": 1}
    assert sum(v["attempts"] for v in r["by_role"].values()) == len(attempts)
    ledger = [json.loads(line) for p in (run.home / "ledger").glob("*.jsonl") for line in p.read_text().splitlines()]
    (model, m), = r["by_model"].items()
    assert model.startswith("scripted:") and m["calls"] == len(ledger) and m["landed"] == 4
    assert m["input_tokens"] == r["tokens"]["input_tokens"] == sum(e["input_tokens"] for e in ledger)
    assert len(r["spend"]) == len(ledger) and r["spend"][-1][2] == sum(
        e[k] for e in ledger for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))
    assert [tid for _, tid in r["landings"]] == [tid for tid in reversed(landed_ids(run.repo))]
    assert r["run"]["agents"] == 3 and r["run"]["attempts"] == len(attempts) and r["run"]["seconds"] >= 4
    assert {"cost_by_agent", "cost_by_model", "tokens", "cost_usd", "secrets_scan"} <= set(r)


def test_text_fits_80_columns_and_lists_the_no_op(run: Colony) -> None:
    proc = cli("report", "--repo", str(run.repo), check=True)
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    text = proc.stdout
    for group in ("landed (3):", "resolved by a conflict task (1):", "done without a change (1):", "failed (1):",
                  "not finished (1):", "conflicts (1):"):
        assert group in lines
    noop_at = lines.index("done without a change (1):")
    assert lines[noop_at + 2].startswith("  noop ") and "its work leaves the worktree as main is" in lines[noop_at + 4]
    assert LONG not in text and LONG[:23] + "…" in text  # cut to its column, marked
    assert "      Make sure greet exists" in lines  # what a person must look at has its title below
    assert "      " + BROKEN[:73] + "…" in lines  # cut to 80 columns, marked
    for tid in ("fast-punct", "slow-title", "noop", "broken", "blocked"):
        assert f"  {tid} " in text
    # aligned columns: in each table every row's cost ends where the header's COST does
    tables = [at for at, line in enumerate(lines) if line.startswith("  TASK ")]
    assert len(tables) == 5
    for at in tables:
        end = lines[at].index("COST") + 4
        for row in lines[at + 1:lines.index("", at)]:
            if not row.startswith("    "):  # a task's row, not its title or note below it
                assert row[end - 7:end] == "$0.0000", (lines[at], row)
    assert "3 agents, 7 attempts, 1 conflict" in text.replace("\n    ", " ")
    assert any(line.startswith("secrets scan: ") for line in lines)


def test_html_flag_refuses_a_path_it_cannot_write(run: Colony, tmp_path: Path) -> None:
    proc = cli("report", "--repo", str(run.repo), "--html", str(tmp_path / "missing" / "r.html"))
    assert proc.returncode == 2 and "folder" in proc.stderr and "does not exist" in proc.stderr
    proc = cli("report", "--repo", str(run.repo), "--html", str(tmp_path))
    assert proc.returncode == 2 and "that is a folder" in proc.stderr


# -- the page, in a real browser ------------------------------------------------------------------------
# Read at import: conftest's no_stigmergy_env removes every STIGMERGY_* variable before each test.
REQUIRE_CHROMIUM = os.environ.get("STIGMERGY_REQUIRE_CHROMIUM") == "1"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    why = "no chromium here: `apt-get install -y chromium` (as root) to render the HTML report for real"
    if REQUIRE_CHROMIUM:
        pytest.fail(why)
    pytest.skip(why)


def browse(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Its own profile folder, so that nothing of the user's browser is read or written.
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp / 'profile'}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=90, check=True)


class Dom(HTMLParser):
    """The elements and text of a dumped DOM (as the browser built it, not as we wrote it)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_page_draws_every_attempt_in_a_real_browser(run: Colony, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    proc = cli("report", "--json", "--repo", str(run.repo), "--html", str(page), check=True)
    r = json.loads(proc.stdout)  # stdout stays the JSON: the page is said on stderr
    assert f"report written to {page}" in proc.stderr
    source = page.read_text()
    assert "<script" not in source and "&lt;script&gt;alert(2)&lt;/script&gt;" in source
    assert "http://" not in source.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in source

    dom = Dom()
    dom.feed(browse(page, tmp_path, "--dump-dom").stdout)
    tags = [tag for tag, _ in dom.elements]
    assert "svg" in tags and "script" not in tags and "img" not in tags and "link" not in tags  # escaped, offline
    bars = [attrs for tag, attrs in dom.elements if tag == "rect" and attrs.get("class") == "attempt"]
    assert len(bars) == len(r["attempts"]) == 7
    assert sorted((b["data-task"], b["data-outcome"]) for b in bars) == sorted(
        (a["task"], a["outcome"]) for a in r["attempts"])
    assert all(float(b["width"] or 0) >= 2 for b in bars)
    marks = [attrs for tag, attrs in dom.elements if tag == "path" and attrs.get("class") == "conflict-mark"]
    assert [m["data-task"] for m in marks] == ["slow-title"]
    assert {attrs.get("class") for tag, attrs in dom.elements if tag == "g"} >= {"legend", "axis"}
    assert {attrs.get("class") for tag, attrs in dom.elements if tag == "svg"} == {"timeline", "throughput", "spend"}
    text = " ".join(dom.text)
    for t in r["tasks"]:
        assert t["id"] in text
    assert NASTY in text  # shown as text, whole, in the tables
    for heading in ("Conflicts and how they were resolved", "Done without a change (1)", "Most skipped",
                    "Slowest (first claim to finish)", "Per role", "Per model", "Secrets scan"):
        assert heading in text

    shot = tmp_path / "shot.png"
    browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,420", "--hide-scrollbars")
    width, height, pixels = read_png(shot)
    assert (width, height) == (1200, 420)
    # The timeline is the only picture in the first 420 pixels: its bars are there, in their colours.
    counts = {name: sum(1 for p in pixels if near(p, colour)) for name, colour in (
        ("landed", (0x2e, 0x9d, 0x4f)), ("conflict", (0xe8, 0x89, 0x2b)), ("failed", (0xd6, 0x45, 0x45)),
        ("unchanged", (0x9a, 0xa5, 0xb1)))}
    legend_swatch = 12 * 12
    assert counts["conflict"] > 20 * legend_swatch  # slow-title's 4-second bar, not only its legend swatch
    assert all(n > legend_swatch for n in counts.values()), counts


def near(p: tuple[int, int, int], q: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 3 for a, b in zip(p, q))


def read_png(path: Path) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB(A) PNG, with nothing but zlib."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, kind = 8, b"", 0, 0, 0
    while pos < len(data):
        size, tag = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + size]
        if tag == b"IHDR":
            width, height, depth, kind = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and kind in (2, 6), (depth, kind)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + size
    bpp = 3 if kind == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, pixels = bytearray(stride), []
    for y in range(height):
        filt, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if filt == 1:
                line[i] = (line[i] + a) & 255
            elif filt == 2:
                line[i] = (line[i] + b) & 255
            elif filt == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif filt == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels += [(line[x], line[x + 1], line[x + 2]) for x in range(0, stride, bpp)]
        prev = line
    return width, height, pixels
