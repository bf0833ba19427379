"""The user's checkout moves with main at every landing, or the landing waits: real repositories,
real git commands in the user's checkout, a real lander killed half-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import USER, make_repo
from harness.checkout import JOURNAL, Blocked, UserCheckout
from harness.git import Git
from harness.fence import Fence
from harness.integrate import Landed, land
from harness.workspace import Workspace

pytestmark = pytest.mark.usefixtures("no_user_git_config")


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", {"shared.txt": "one\ntwo\nthree\n", "notes.txt": "notes\n"})


def lander(repo: Path, agent: str = "ant-1") -> Workspace:
    ws = Workspace(repo, repo.parent / "workspaces", agent)
    ws.prepare()
    return ws


def land_files(ws: Workspace, files: dict[str, str], task: str = "t-1", **kw: object) -> object:
    ws.prepare()
    for name, text in files.items():
        (ws.path / name).write_text(text)
    commit = ws.commit_all(f"work by {ws.agent}")
    assert commit is not None
    got = Fence.acquire(ws.git, task, 1, f"tok-{task}")
    assert isinstance(got, Fence)
    return land(ws, commit, title=task, fence=got, verify=lambda _: True, **kw)  # type: ignore[arg-type]


def status(repo: Path) -> str:
    return Git(repo).run("status", "--porcelain")


def as_user(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git as the person at the terminal runs it: plain, not through the colony's wrapper."""
    return subprocess.run(["git", *args], cwd=repo, env={**os.environ, **USER.env()}, capture_output=True, text=True)


def user_git(repo: Path, *args: str) -> str:
    done = as_user(repo, *args)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def patient_user(repo: Path, *args: str) -> None:
    """A person at the terminal: when git is busy (a landing holds the index for some milliseconds,
    as any concurrent git command may; `git stash` then fails without a word) they run it again."""
    for _ in range(100):
        done = as_user(repo, *args)
        if done.returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"git {' '.join(args)} kept failing: {done.stdout}{done.stderr}")


def pull(repo: Path) -> None:
    """`git pull` (a merge), as a careful person runs it beside the colony: git merge reads the
    index before it locks it, so a landing holds the lock until a merge that began under it ends,
    and that merge fails loudly ("Unable to write index") instead of writing an index without the
    landed work; they abort it and pull again, as after any failed merge."""
    for _ in range(100):
        done = as_user(repo, "pull", "-q", "--no-rebase", "--no-edit", "origin", "main")
        if done.returncode == 0:
            return
        if (repo / ".git" / "MERGE_HEAD").exists():
            patient_user(repo, "merge", "--abort")
        time.sleep(0.05)
    raise AssertionError(f"git pull kept failing: {done.stderr}")


def pop_stash(repo: Path) -> None:
    """`git stash pop`, as a careful person runs it beside another git process: `stash apply` takes
    the index lock more than once, so a landing in between can fail it after the files are back; the
    stash then still holds what the files hold, and is dropped."""
    for _ in range(100):
        if as_user(repo, "stash", "pop").returncode == 0:
            return
        if as_user(repo, "diff", "--quiet", "stash@{0}").returncode == 0:  # applied after all
            user_git(repo, "stash", "drop")
            return
        time.sleep(0.05)
    raise AssertionError("git stash pop kept failing")


def test_clean_checkout_follows_main(target: Path) -> None:
    result = land_files(lander(target), {"feature.txt": "feature\n"})
    assert isinstance(result, Landed)
    assert (target / "feature.txt").read_text() == "feature\n"
    assert status(target) == ""


def test_local_edits_elsewhere_are_kept_and_commit_am_keeps_landed_work(target: Path) -> None:
    """The bug as seen: a dirty checkout stayed behind main, and `git commit -am` undid landed work."""
    (target / "notes.txt").write_text("my own edit\n")
    (target / "scratch.txt").write_text("untracked, mine\n")
    (target / "staged.txt").write_text("staged, mine\n")
    user_git(target, "add", "staged.txt")
    ws = lander(target)
    for i in range(3):
        assert isinstance(land_files(ws, {f"f{i}.txt": f"{i}\n"}, task=f"t-{i}"), Landed)
    assert sorted(status(target).splitlines()) == [" M notes.txt", "?? scratch.txt", "A  staged.txt"]
    assert all((target / f"f{i}.txt").exists() for i in range(3))
    user_git(target, "commit", "-qam", "user work")
    tip = set(Git(target).run("ls-tree", "--name-only", "main").split())
    assert {"f0.txt", "f1.txt", "f2.txt", "staged.txt", "notes.txt"} <= tip
    assert Git(target).run("show", "main:notes.txt") == "my own edit\n"
    assert (target / "scratch.txt").read_text() == "untracked, mine\n"


def test_a_landing_over_an_uncommitted_edit_waits_and_then_lands(target: Path) -> None:
    (target / "shared.txt").write_text("the user is editing this\n")
    before = Git(target).resolve("main")
    ws = lander(target)
    blocked = land_files(ws, {"shared.txt": "agent version\n"})
    assert isinstance(blocked, Blocked) and "shared.txt" in blocked.reason
    assert Git(target).resolve("main") == before  # nothing landed, nothing of the user's touched
    assert (target / "shared.txt").read_text() == "the user is editing this\n"
    assert not (target / ".git" / "index.lock").exists() and not (target / ".git" / JOURNAL).exists()

    reasons: list[str] = []

    def user_gives_way(reason: str) -> bool:  # the user commits their edit elsewhere: stash it
        reasons.append(reason)
        user_git(target, "stash")
        return True
    result = land_files(ws, {"shared.txt": "agent version\n"}, task="t-2", wait=user_gives_way)
    assert isinstance(result, Landed) and len(reasons) == 1
    assert (target / "shared.txt").read_text() == "agent version\n" and status(target) == ""
    assert "the user is editing this" in user_git(target, "stash", "show", "-p")  # theirs is kept


def test_an_untracked_file_the_agent_also_creates_blocks_instead_of_sticking(target: Path) -> None:
    (target / "new.txt").write_text("mine\n")
    blocked = land_files(lander(target), {"new.txt": "agent's\n"})
    assert isinstance(blocked, Blocked) and "new.txt" in blocked.reason
    assert (target / "new.txt").read_text() == "mine\n"
    (target / "new.txt").unlink()
    assert isinstance(land_files(lander(target), {"new.txt": "agent's\n"}, task="t-2"), Landed)
    assert status(target) == ""


def test_a_git_command_holding_the_index_holds_the_landing(target: Path) -> None:
    lock = target / ".git" / "index.lock"
    lock.write_text("")  # as `git commit` does while its editor is open
    blocked = land_files(lander(target), {"f.txt": "f\n"})
    assert isinstance(blocked, Blocked) and "index.lock" in blocked.reason
    assert lock.exists()  # never ours to remove
    lock.unlink()
    assert isinstance(land_files(lander(target), {"f.txt": "f\n"}, task="t-2"), Landed)


def test_a_git_command_running_in_the_checkout_holds_the_landing(target: Path) -> None:
    """Git reads the index before it locks it (a merge, a pull): a landing in between would be
    written back over. So a landing waits while a git command of the user's runs there."""
    busy = subprocess.Popen(["git", "-c", "alias.nap=!sleep 2", "nap"], cwd=target,
                            env={**os.environ, **USER.env()})
    try:
        time.sleep(0.3)
        blocked = land_files(lander(target), {"f.txt": "f\n"})
        assert isinstance(blocked, Blocked) and "a git command is running" in blocked.reason
        assert f"pid {busy.pid}" in blocked.reason
    finally:
        busy.wait()
    assert isinstance(land_files(lander(target), {"f.txt": "f\n"}, task="t-2"), Landed)
    assert (target / "f.txt").exists() and status(target) == ""
    reader = subprocess.Popen(["git", "-c", "core.pager=sleep 2", "-p", "log"], cwd=target)  # a log left open
    try:
        time.sleep(0.3)
        assert isinstance(land_files(lander(target), {"g.txt": "g\n"}, task="t-3"), Landed)
    finally:
        reader.wait()


def test_a_checkout_on_another_branch_is_not_touched(target: Path) -> None:
    user_git(target, "checkout", "-q", "-b", "mine")
    assert isinstance(land_files(lander(target), {"feature.txt": "feature\n"}), Landed)
    assert not (target / "feature.txt").exists() and status(target) == ""
    user_git(target, "checkout", "-q", "main")  # and main is consistent when they come back
    assert (target / "feature.txt").exists() and status(target) == ""


def test_describe_tells_the_launcher_what_will_happen(target: Path) -> None:
    from harness.colony import Colony
    Colony.init(target)
    assert UserCheckout(Git(target), "main").describe() is None
    (target / "notes.txt").write_text("edit\n")
    text = UserCheckout(Git(target), "main").describe()
    assert text is not None and "1 uncommitted change" in text and "waits" in text
    proc = subprocess.run([sys.executable, "-m", "harness", "--agents", "1", "--repo", str(target), "--model",
                           "scripted:/nonexistent.yaml", "--max-hours", "0.0003"], capture_output=True, text=True,
                          timeout=60, cwd=target.parent)
    assert "1 uncommitted change" in proc.stderr  # the launcher says so at start


KILLED = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from harness.checkout import UserCheckout
    from harness.git import Git
    repo, old, new, when = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    git = Git(repo)
    def transact():
        if when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        done = git.call("update-ref", "refs/heads/main", new, old)
        os.kill(os.getpid(), signal.SIGKILL)
    UserCheckout(git, "main").move(old, new, transact)
""")


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_lander_killed_half_way_is_finished_or_undone_by_the_next(target: Path, when: str) -> None:
    (target / "notes.txt").write_text("my edit\n")
    ws = lander(target)
    (ws.path / "feature.txt").write_text("feature\n")
    (ws.path / "shared.txt").write_text("changed by the agent\n")
    old = str(ws.git.resolve("main"))
    assert ws.commit_all("work") is not None
    tree = ws.wt.run("rev-parse", "HEAD^{tree}").strip()
    new = ws.git.run("commit-tree", tree, "-p", old, "-m", "landing", env=ws.identity.env()).strip()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", KILLED, str(target), old, new, when], env=env)
    assert proc.returncode == -signal.SIGKILL
    assert (target / ".git" / "index.lock").exists()  # the killed lander's lock, and its files half-moved
    UserCheckout(Git(target), "main").settle()  # what the next landing does first
    assert not (target / ".git" / "index.lock").exists()
    assert (target / "notes.txt").read_text() == "my edit\n"
    if when == "before":  # not landed: the files it wrote are put back
        assert Git(target).resolve("main") == old
        assert not (target / "feature.txt").exists() and (target / "shared.txt").read_text() == "one\ntwo\nthree\n"
    else:  # landed: index and files are those of the new main
        assert Git(target).resolve("main") == new
        assert (target / "feature.txt").exists() and (target / "shared.txt").read_text() == "changed by the agent\n"
    assert status(target) == " M notes.txt\n"


def test_a_colony_lands_20_tasks_while_the_user_works_in_the_checkout(target: Path, tmp_path: Path) -> None:
    """Issue scenario: agents land while a scripted user edits, adds untracked files, commits with
    -am, stashes and pulls in the checkout. Every task's file ends on main's tip and every user change is kept."""
    import yaml
    from conftest import landed_ids, set_config, wait_for
    from harness.colony import Colony
    from harness.tasks import Task

    colony = set_config(Colony.init(target), heartbeat_interval=0.5)
    ids = [f"t{i:02d}" for i in range(20)]
    colony.add_many([Task(id=i, title=f"write {i}.txt") for i in ids])
    script = tmp_path / "script.yaml"
    script.write_text(yaml.safe_dump([{"match": "^t", "actions": [
        {"sleep": 0.2}, {"bash": 'echo "$STIGMERGY_TASK" > "$STIGMERGY_TASK.txt"'}, {"finish": "ok"}]}]))
    (target / "t19.txt").write_text("the user's own t19\n")  # untracked, and an agent will create it too
    # A colleague pushes to the user's remote, and the user pulls (a merge on main) during the run.
    origin, colleague = tmp_path / "origin.git", tmp_path / "colleague"
    Git(tmp_path).run("clone", "-q", "--bare", str(target), str(origin))
    Git(tmp_path).run("clone", "-q", str(origin), str(colleague))
    user_git(target, "remote", "add", "origin", str(origin))
    pulled: list[str] = []
    proc = subprocess.Popen([sys.executable, "-m", "harness", "--agents", "3", "--repo", str(target), "--model",
                             f"scripted:{script}", "--workspaces", str(tmp_path / "ws"), "--until-empty"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        n = 0
        while proc.poll() is None:
            n += 1
            (target / "notes.txt").write_text(f"notes, edit {n}\n")  # an uncommitted edit, again and again
            (target / f"scratch-{n}.txt").write_text("untracked\n")
            if n % 3 == 0:
                (target / f"mine-{n}.txt").write_text(f"committed by the user {n}\n")
                patient_user(target, "add", f"mine-{n}.txt")
                patient_user(target, "commit", "-qam", f"user commit {n}")
            if n % 3 == 1:  # a fresh edit is there to stash
                patient_user(target, "stash")
                pop_stash(target)
            if n % 3 == 2:
                name = f"pulled-{n}.txt"
                (colleague / name).write_text(f"from a colleague {n}\n")
                user_git(colleague, "add", name)
                user_git(colleague, "commit", "-qm", f"colleague {n}")
                user_git(colleague, "push", "-q", "origin", "HEAD:main")
                pull(target)
                pulled.append(name)
            if n == 8:  # by now t19's landing may be waiting on the untracked file: move it aside
                wait_for(lambda: any(e["event"] == "landing_blocked" and e.get("task") == "t19"
                                     for e in colony.events()) or proc.poll() is not None, 60, "t19 to wait")
                if proc.poll() is None:  # and status tells the user what it waits for
                    shown = subprocess.run([sys.executable, "-m", "harness", "status", "--repo", str(target)],
                                           capture_output=True, text=True).stdout
                    assert "waiting to land" in shown and "t19.txt" in shown, shown
                (target / "t19.txt").rename(target / "t19.txt.mine")
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert sorted(landed_ids(target)) == ids
    tip = Git(target)
    for i in ids:
        assert tip.run("show", f"main:{i}.txt") == f"{i}\n"
    for k in range(3, n + 1, 3):
        assert tip.run("show", f"main:mine-{k}.txt") == f"committed by the user {k}\n"
    assert pulled and all(tip.run("show", f"main:{name}").startswith("from a colleague") for name in pulled)
    assert (target / "notes.txt").read_text() == f"notes, edit {n}\n"
    assert all((target / f"scratch-{k}.txt").exists() for k in range(1, n + 1))
    assert (target / "t19.txt.mine").read_text() == "the user's own t19\n"
    assert any(e["event"] == "landing_blocked" and e.get("task") == "t19" for e in colony.events())
    # The checkout is consistent with main: nothing staged, the only change is the user's own edit.
    assert tip.run("diff", "--cached", "--name-only") == ""
    assert [ln for ln in status(target).splitlines() if not ln.startswith("??")] in ([" M notes.txt"], [])
    (target / "notes.txt").write_text("the user's last edit\n")
    user_git(target, "commit", "-qam", "the user's last commit")  # and an ordinary commit undoes nothing
    assert all(tip.run("show", f"main:{i}.txt") == f"{i}\n" for i in ids)
