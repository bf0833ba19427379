"""`python -m harness demo`: the whole colony, offline, on a real target repository."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from harness.colony import Colony


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def trailers(repo: Path, key: str) -> list[str]:
    out = git(repo, "log", "--first-parent", f"--format=%(trailers:key={key},valueonly)", "main")
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_demo_lands_every_task_once_through_a_real_conflict(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "harness", "demo", "--dir", str(target), "--agents", "4", "--timeout", "300"],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    assert "PROBLEM" not in proc.stdout

    colony = Colony.open(target)
    everything = colony.listing("all")
    ids = [t.id for _, t in everything]
    assert {st for st, _ in everything} == {"done"}
    assert len(ids) >= 30

    # Every task landed exactly once: under its own Task-Id, or - for the side of a conflict that
    # lost the race - under its conflict task's commit, which names it in `Resolves:`.
    landed, resolved = trailers(target, "Task-Id"), trailers(target, "Resolves")
    assert Counter(landed + resolved) == Counter(ids)

    conflicts = [t for _, t in everything if t.kind == "merge_conflict"]
    assert conflicts and all(t.id.startswith("conflict-") and t.resolves for t in conflicts)
    assert {t.resolves for t in conflicts} <= {"normalize-spaces", "normalize-accents"}
    assert sorted(resolved) == sorted(t.resolves for t in conflicts)
    assert [t.id for _, t in everything if t.discovered_from == "slugify"] != []  # the follow-up, also landed

    clean = git(target, "show", "main:textkit/clean.py")
    assert 'return " ".join(text.split()).lower()' in clean  # normalize-spaces' change
    assert "unicodedata.combining(c)" in clean  # normalize-accents' change
    assert "<<<<<<<" not in clean

    assert git(target, "status", "--porcelain") == ""
    assert (target / "textkit" / "translit.py").exists()  # the user's checkout followed main
    suite = subprocess.run([sys.executable, "-m", "pytest", "-q"], cwd=target, capture_output=True, text=True)
    assert suite.returncode == 0, suite.stdout
    assert re.search(r"\b3[0-9] passed", suite.stdout)


def test_demo_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me\n")
    proc = subprocess.run([sys.executable, "-m", "harness", "demo", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "another --dir" in proc.stderr and "remove it" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_demo_across_machines_lands_every_task_once_through_a_git_server(tmp_path: Path) -> None:
    """`demo --nest`: git daemon on loopback serving the nest, three host clones with a launcher each."""
    from harness.nest import Nest

    where = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "harness", "demo", "--nest", "--dir", str(where), "--agents", "3",
                           "--timeout", "300"], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    assert "PROBLEM" not in proc.stdout
    nest = Nest(str(where / "nest.git"), tmp_path / "cache")  # the served folder itself, read after the demo
    everything = nest.listing("all")
    assert {st for st, _ in everything} == {"done"} and len(everything) >= 27
    assert [t.id for _, t in everything if t.discovered_from == "slugify"] != []  # an agent filed into the nest
    landed = trailers(where / "nest.git", "Task-Id")
    assert Counter(landed) == Counter(t.id for _, t in everything)  # each on the nest's main once
    hosts = {e["agent"].rsplit("-coder-", 1)[0] for e in nest.events() if e["event"] == "done"}
    assert hosts == {"host-0", "host-1", "host-2"}  # every machine landed work
    for h in range(3):  # each host's clone untouched: its colony is hidden, its checkout not moved
        assert git(where / f"host-{h}", "status", "--porcelain") == ""
    git(tmp_path, "clone", "-q", str(where / "nest.git"), "check")
    suite = subprocess.run([sys.executable, "-m", "pytest", "-q"], cwd=tmp_path / "check", capture_output=True, text=True)
    assert suite.returncode == 0 and re.search(r"\b[23][0-9] passed", suite.stdout), suite.stdout  # main is green
