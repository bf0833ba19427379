"""The nest: the colony's environment kept in a git remote, so agents on many machines share one.

Any git URL will do (a path, file://, ssh, https, git://): the remote is the only thing the
agents share, and it is the compare-and-swap. Layout on the remote, all under refs/stigmergy/:

    config                   the colony's config.yaml (``nest init``)
    tasks/<status>/<id>      the task, its last claim generation and the claim; the folder is its
                             status (pending, active, done, failed), as on local disk
    quarantine/<id>          a task whose record did not parse, moved aside with the reason
    beats/<agent>            the agent's last heartbeat
    log/<writer>             one chain of commits per writing process: its events and notes
    ledger/<agent>           the agent's model calls (tokens, cost), a batch per heartbeat
    STOP                     present: every agent stops

Each ref points at a record: a commit with the empty tree whose message is one JSON object
(ASCII). A change is one ``git push --atomic`` in which every update names the value it expects
(``--force-with-lease=<ref>:<old>``, empty for "must not exist"); the remote checks it under its
ref lock, so of many pushers expecting one value exactly one wins. Hence:

- add: create ``tasks/pending/<id>``: one of many filers of an id wins.
- claim: delete ``tasks/pending/<id>`` expecting the record read (generation N) and create
  ``tasks/active/<id>`` (N + 1, the claim); a take-over of a stale claim (reap) moves it back
  expecting the stale record, under a generation of its own, as on local disk. A move is one
  atomic push, so a task is in exactly one status.
- release, done, fail: from the owner's active record, expected, to the next: a reaper that
  got there first makes the owner's push fail, and the owner learns it is no longer the owner.
- events and notes: a process appends to its own chain only, so appends never contend; a
  reader merges the chains by time, each in its own order.

What is read is fetched into a local bare cache (objects only, never refs, so that the
processes of one machine share it without locking each other); records are immutable, so the
cache is never stale, only the ref listing (``ls-remote``) is asked anew. Since the status is in
the ref's name, a claim reads no record but the pending ones it has not seen yet: one listing and
one push per try once a process has read the pool.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import random
import re
import secrets
import shutil
import socket
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import roles, tasks
from harness.config import DEFAULT_CONFIG, Config
from harness.errors import InvalidTask, NestUnreachable, NotOwner, UnknownTask
from harness.git import Completed, Git
from harness.leases import Claim, owner_gone
from harness.pool import Busy, Entry, busy_keys, effective_priority, meta_of
from harness.redact import redact
from harness.tasks import Task

NS = "refs/stigmergy/"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_IDENT = "stigmergy <nest@stigmergy.local>"
_REFUSED = re.compile(r"^!\t[^\t]*:([^\t]*)\t(.*)$", re.M)  # a porcelain push line: a ref the remote refused, why
# ... because a ref was not as expected, or another push held it: a lost race, nothing changed.
_LOST_RACE = re.compile(r"stale info|atomic push failed|atomic transaction failed|cannot lock ref|failed to lock|"
                        r"failed to update ref|reference already exists|incorrect old value|fetch first")
MISSING = ""  # an expected old value: the ref must not exist
# git's words for a connection that was never made (nothing sent, so safe to try again).
_NO_CONNECTION = re.compile(r"unable to connect|Connection refused|Could not resolve host|Network is unreachable|"
                            r"No route to host|Connection timed out|ssh: connect to host")


def host_name() -> str:
    """This machine's name in a nest: STIGMERGY_HOST (containers and test hosts sharing one
    hostname must each have their own: a pid is judged alive or gone only on its own host),
    else the hostname."""
    return os.environ.get("STIGMERGY_HOST") or socket.gethostname()


def id_prefix(host: str) -> str:
    """The launcher's agent ids on ``host`` start with this, so that two hosts' coder-01 are two
    agents in the nest (a heartbeat is the agent's, whichever host beat last)."""
    return (re.sub(r"[^a-z0-9_-]+", "-", host.lower()).strip("-_")[:24] or "host") + "-"


def cache_for(url: str) -> Path:
    """The machine's cache of a nest, shared by its processes: objects only, so safe to share."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "stigmergy" / "nest" / hashlib.sha256(url.encode()).hexdigest()[:16]


def _first_words(stderr: str) -> str:
    """git's own reason, without its advice: the first ``fatal:``/``error:`` line, else the last."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1] if lines else "no reason given")
    return said[:300]


def absolute(url: str) -> str:
    """``url`` as every process on this machine names it: a path made absolute, anything else as given."""
    return str(Path(url).resolve()) if is_path(url) else url


def is_path(url: str) -> bool:
    """``url`` names a folder on this machine (not ssh's host:path, nor a URL with a scheme)."""
    return "://" not in url and ":" not in url.split("/", 1)[0]


class Remote:
    """The git half: a remote URL and a local git dir holding the objects read from it or written:
    the nest's bare cache, or (to land) the git dir of a clone of the target that holds the work."""

    def __init__(self, url: str, cache: Path, borrow: Path | None = None) -> None:
        self.url, self.cache = url, cache  # url: absolute when a path (git runs in the cache)
        self.git = Git(cache)
        # Unattended: ssh must fail rather than ask for a password nobody will type (unless the
        # user chose their own ssh command).
        self.env = {} if {"GIT_SSH", "GIT_SSH_COMMAND"} & set(os.environ) else {"GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}
        if borrow is not None:  # the objects of another git dir too (read-only), so one push can send both
            self.env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = str(borrow / "objects")
        if not (cache / "objects").is_dir():  # made aside and renamed in: processes may start at once
            cache.parent.mkdir(parents=True, exist_ok=True)
            aside = cache.parent / f".{cache.name}.{secrets.token_hex(4)}"
            Git(cache.parent).run("init", "--bare", "-q", str(aside))
            try:
                os.rename(aside, cache)
            except OSError:  # another process's is in place
                shutil.rmtree(aside)
        self._write(b"tree", b"")  # the empty tree every record commit has

    def _say(self, what: str, stderr: str) -> NestUnreachable:
        return NestUnreachable(redact(f"the nest {self.url} could not {what}: {_first_words(stderr)}; "
                                      "check the URL (`stigmergy nest init URL` makes one), the network and your "
                                      "access to it"))

    def _talk(self, *args: str) -> Completed:
        """One git command that talks to the remote. A connection that was never made (a server
        whose backlog is full, a network blip) is tried again, a few times: nothing was sent, so
        nothing can have happened twice. Any other failure is the caller's to judge."""
        for wait in (0.1, 0.3, 1.0, 3.0, 0.0):
            done = self.git.call(*args, env=self.env)
            if done.returncode == 0 or not _NO_CONNECTION.search(done.stderr) or not wait:
                break
            time.sleep(wait * random.uniform(0.5, 1.5))
        return done

    def _fetch(self, refs: dict[str, str]) -> None:
        """Fetch the objects ``refs`` (name -> oid, as listed) point at, by object id (a protocol v2
        server gives any object it has). No ref is written here, so processes sharing the cache
        never lock each other. A ref that moved or went since it was listed may make the fetch
        fail: then those still where they were are fetched again (the others are the next look's),
        and only a failure of those is the nest's."""
        fetch = ("-c", "gc.auto=0", "fetch", "-q", "--no-tags", "--no-write-fetch-head", "--", self.url)
        done = self._talk(*fetch, *sorted(set(refs.values())))
        if done.returncode != 0:
            now = self.refs(NS + "*") | self.refs("refs/heads/*")
            same = sorted({oid for ref, oid in refs.items() if now.get(ref) == oid})
            done = self._talk(*fetch, *same) if same else Completed(0, "", "")
        if done.returncode != 0:
            raise self._say("be fetched from", done.stderr)

    def refs(self, pattern: str = NS + "*") -> dict[str, str]:
        """Every ref of the remote matching ``pattern`` and the record it points at, now."""
        done = self._talk("ls-remote", "--", self.url, pattern)
        if done.returncode != 0:
            raise self._say("be listed", done.stderr)
        return {ref: oid for oid, ref in (line.split("\t", 1) for line in done.stdout.splitlines())}

    def messages(self, refs: dict[str, str]) -> dict[str, str]:
        """The record of each ref (its commit's message), fetching those the cache lacks. A ref
        that moved since it was listed is left out: the next listing sees its new value."""
        got = self._read(set(refs.values()))
        missing = sorted(ref for ref, oid in refs.items() if oid not in got)
        if missing:
            self._fetch({ref: refs[ref] for ref in missing})
            got |= self._read({refs[ref] for ref in missing})
        return {ref: got[oid] for ref, oid in refs.items() if oid in got}

    def tip(self, branch: str) -> str | None:
        """The commit ``branch`` is at in the nest, fetched here (no ref written); None: no such branch."""
        ref = f"refs/heads/{branch}"
        oid = self.refs(ref).get(ref)
        if oid is not None and self.git.resolve(oid) is None:
            self._fetch({ref: oid})
        return oid

    def _read(self, oids: set[str]) -> dict[str, str]:
        if not oids:
            return {}
        # Sizes are in bytes: the text is turned back into the bytes git wrote before it is cut.
        out = self.git.run("cat-file", "--batch", input="".join(f"{oid}\n" for oid in oids)).encode(
            "utf-8", "surrogateescape")
        got, at = {}, 0
        while at < len(out):  # "<oid> commit <size>\n<body>\n" or "<oid> missing\n"
            eol = out.index(b"\n", at)
            head = out[at:eol].split()
            at = eol + 1
            if len(head) == 3:
                body = out[at:at + int(head[2])]
                at += int(head[2]) + 1
                got[head[0].decode()] = body.partition(b"\n\n")[2].decode("utf-8", "replace")
        return got

    def _write(self, kind: bytes, body: bytes) -> str:
        raw = kind + b" %d\0" % len(body) + body
        oid = hashlib.sha1(raw).hexdigest()
        path = self.cache / "objects" / oid[:2] / oid[2:]
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.parent / f"tmp_{secrets.token_hex(6)}"
            tmp.write_bytes(zlib.compress(raw))
            os.replace(tmp, path)  # identical content, identical name: a concurrent writer is harmless
        return oid

    def record(self, data: dict[str, Any], parent: str | None = None) -> str:
        """Write a record commit (``data`` as its message, ``parent`` for a log chain); its oid."""
        stamp = f"{_IDENT} {int(time.time())} +0000"
        head = f"tree {EMPTY_TREE}\n" + (f"parent {parent}\n" if parent else "") + f"author {stamp}\ncommitter {stamp}\n\n"
        return self._write(b"commit", (head + json.dumps(data, sort_keys=True) + "\n").encode("ascii"))

    def push(self, updates: Sequence[tuple[str, str | None, str | None]]) -> bool:
        """One atomic push of (ref, expected old value or None for "whatever it is", new value or
        None to delete). True when every update was made; False when the remote refused because a
        ref was not as expected (a lost race: nothing was changed); NestUnreachable otherwise."""
        return not self.lost(updates)

    def lost(self, updates: Sequence[tuple[str, str | None, str | None]]) -> set[str]:
        """:meth:`push`, saying which refs were not as expected: none when every update was made."""
        leases = [f"--force-with-lease={ref}:{old}" for ref, old, _ in updates if old is not None]
        # No lease: forced ("+"). With one, git forces only when the ref is as expected.
        specs = [("+" if old is None else "") + (f"{new}:{ref}" if new else f":{ref}") for ref, old, new in updates]
        args = ["push", "--porcelain", "--atomic", "--no-verify", *leases, "--", self.url, *specs]
        done = self._talk(*args)
        if done.returncode == 0:
            return set()
        refused = _REFUSED.findall(done.stdout)
        if refused and all(_LOST_RACE.search(why) for _, why in refused):
            # The others of an atomic push are refused too, "atomic push failed": not theirs.
            return {ref for ref, why in refused if "atomic push failed" not in why} or {ref for ref, _ in refused}
        said = "; ".join(why for _, why in refused if not _LOST_RACE.search(why)) or _first_words(done.stderr)
        raise NestUnreachable(redact(f"the nest {self.url} refused a push ({said}): check the URL, your access to "
                                     "it, and that nothing (branch protection, a hook) guards refs/stigmergy/"))


def _owner(state: State) -> str:
    return str((state.claim or {}).get("agent"))


def _event(event: str, task: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"event": {"event": event, "task": task, **fields}}


def _note(task_id: str, agent: str, text: str, kind: str) -> dict[str, Any]:
    return {"on": tasks.check_id(task_id), "note": {"agent": agent, "kind": kind, "text": text}}


STATUSES = ("pending", "active", "done", "failed")


def task_ref(status: str, task_id: str) -> str:
    return f"{NS}tasks/{status}/{task_id}"


@dataclass
class State:
    """What ``tasks/<status>/<id>`` says: the task, its status, its last claim generation and the claim."""

    status: str
    task: Task
    generation: int = 0
    claim: dict[str, Any] | None = None  # when done: the claim that landed it
    oid: str = field(default="", compare=False)  # the record it was read from: the next push's lease
    landed: str | None = None  # when done: the commit it landed as

    def data(self) -> dict[str, Any]:
        # The nonce: two pushers of the same next state (two reapers) must not both "win" because
        # git calls a ref already at the value pushed up to date.
        return {"task": self.task.to_dict(), "generation": self.generation, "claim": self.claim,
                "nonce": secrets.token_hex(8), **({"landed": self.landed} if self.landed else {})}


class Nest:
    """The environment (environment.py) in a git remote; see the module docstring."""

    def __init__(self, url: str, home: Path | None = None) -> None:
        self.url = url = absolute(url)
        self.home = home or cache_for(url)
        self.remote = Remote(url, self.home / "objects.git")
        self.host = host_name()
        found = self.remote.messages(self.remote.refs(NS + "config"))
        if not found:
            raise NestUnreachable(redact(f"{url} is no nest yet (it has no {NS}config): run `stigmergy nest init {url}`"))
        self.config_text = str(json.loads(next(iter(found.values())))["config"])  # a host's colony mirrors it
        self.config = Config.parse(self.config_text, f"{redact(url)} {NS}config")
        self._pid, self._writer, self._tip = 0, "", ""  # our log chain: its process, name and head (_push)
        self._read: dict[str, State] = {}  # records parsed, by oid: a record never changes
        self._tips: dict[str, tuple[str, int]] = {}  # ledger chains we write: agent -> (head, calls on it)

    @classmethod
    def init(cls, url: str, config: str = DEFAULT_CONFIG, home: Path | None = None) -> Nest:
        """Make ``url`` a nest (idempotent: an existing nest keeps its config). A local path that
        does not exist yet becomes a bare repository."""
        url = absolute(url)
        if is_path(url) and not Path(url).exists():  # its HEAD names the branch, for `git clone` of it
            Git(Path.cwd()).run("init", "--bare", "-q", f"--initial-branch={Config.parse(config, 'nest init').branch}", url)
        remote = Remote(url, (home or cache_for(url)) / "objects.git")
        remote.push([(NS + "config", MISSING, remote.record({"config": config}))])  # False: it was one already
        return cls(url, home)

    # -- records ---------------------------------------------------------------------------------
    @staticmethod
    def _listed(refs: dict[str, str], statuses: tuple[str, ...] = STATUSES) -> dict[str, tuple[str, str]]:
        """The tasks ``refs`` name in ``statuses``: id -> (status, oid). The names say it all."""
        out = {}
        for ref, oid in refs.items():
            status, _, tid = ref[len(NS + "tasks/"):].partition("/")
            if ref.startswith(NS + "tasks/") and status in statuses and tid:
                out[tid] = (status, oid)
        return out

    def _states(self, listed: dict[str, tuple[str, str]]) -> dict[str, State]:
        """The states of ``listed`` tasks, reading only records not read before; a record that does
        not parse is quarantined, never returned."""
        todo = {task_ref(st, tid): oid for tid, (st, oid) in listed.items() if oid not in self._read}
        for ref, text in self.remote.messages(todo).items():
            status, _, tid = ref[len(NS + "tasks/"):].partition("/")
            try:
                data = json.loads(text)
                task = tasks.from_dict(data["task"], ref)
                if task.id != tid:
                    raise InvalidTask(f"{ref}: its record names task {task.id!r}")
                self._read[todo[ref]] = State(status, task, int(data.get("generation", 0)), data.get("claim"), todo[ref],
                                              data.get("landed"))
            except (ValueError, KeyError, TypeError, InvalidTask) as exc:
                self._quarantine(ref, tid, todo[ref], str(exc))
        return {tid: self._read[oid] for tid, (_, oid) in listed.items() if oid in self._read}

    def _quarantine(self, ref: str, tid: str, oid: str, reason: str) -> None:
        self._push([(ref, oid, None), (NS + f"quarantine/{tid}", None, oid)],
                   [_event("quarantine", tid, reason=reason[:500])])

    def _state(self, task_id: str) -> State | None:
        pattern = NS + f"tasks/*/{tasks.check_id(task_id)}"
        for _ in range(5):  # a task that moves while it is read is read again
            listed = {tid: v for tid, v in self._listed(self.remote.refs(pattern)).items() if tid == task_id}
            if not listed:
                return None
            if (found := self._states(listed).get(task_id)) is not None:
                return found
        raise NestUnreachable(f"the nest {redact(self.url)}: task {task_id!r} kept moving while it was read; try again")

    def _moves(self, old: State, new: State) -> list[tuple[str, str | None, str | None]]:
        """The ref updates that take the task from ``old`` (expected) to ``new``."""
        record = self.remote.record(new.data())
        if old.status == new.status:
            return [(task_ref(old.status, old.task.id), old.oid, record)]
        return [(task_ref(old.status, old.task.id), old.oid, None), (task_ref(new.status, new.task.id), MISSING, record)]

    def _move(self, old: State, new: State, *records: dict[str, Any]) -> bool:
        """The task from ``old`` (expected) to ``new``, and ``records`` onto our log, in one push:
        an event is on the log exactly when what it tells happened."""
        return self._push(self._moves(old, new), list(records))

    # -- tasks -----------------------------------------------------------------------------------
    def add(self, task: Task) -> Task:
        self.add_many([task])
        return task

    def add_many(self, new: list[Task]) -> None:
        ids = [tasks.check_id(t.id) for t in new]
        if len(set(ids)) != len(ids):
            raise InvalidTask(f"task ids repeat in one batch: {sorted({i for i in ids if ids.count(i) > 1})}")
        taken = self.ids() | {ref.rsplit("/", 1)[1] for ref in self.remote.refs(NS + "quarantine/*")}
        for tid in ids:
            if tid in taken:
                raise InvalidTask(f"task {tid!r} already exists; choose another --id or leave it out")
        updates = [(task_ref("pending", t.id), MISSING, self.remote.record(State("pending", t).data())) for t in new]
        told = [_event("add", t.id, meta=meta_of(t), created_by=t.created_by) for t in new]
        if not self._push(updates, told):  # all or nothing: another filer took one of the ids meanwhile
            raise InvalidTask(f"a task among {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''} already exists "
                              "(filed by another process just now); choose another --id")

    def get(self, task_id: str) -> tuple[str, Task]:
        found = self._state(task_id)
        if found is None:
            raise UnknownTask(f"no task {task_id!r} in the nest {redact(self.url)}")
        return found.status, found.task

    def listing(self, status: str = "pending") -> list[tuple[str, Task]]:
        which = STATUSES if status == "all" else (status,)
        states = self._states(self._listed(self.remote.refs(NS + "tasks/*"), which))
        return [(s.status, s.task) for _, s in sorted(states.items())]

    def ids(self, status: str = "all") -> set[str]:
        return set(self._listed(self.remote.refs(NS + "tasks/*"), STATUSES if status == "all" else (status,)))

    def ready(self, task: Task) -> bool:
        done = self.ids("done")
        missing, left = tasks.readiness(task, done.__contains__, time.time())
        return not missing and not left

    def idle(self) -> bool:
        listed = self._listed(self.remote.refs(NS + "tasks/*"))
        if any(st == "active" for st, _ in listed.values()):
            return False
        done = {tid for tid, (st, _) in listed.items() if st == "done"}
        pending = self._states({tid: v for tid, v in listed.items() if v[0] == "pending"})
        # A dependency missing from done is what keeps a task waiting; a back-off alone is not idle.
        return all(tasks.readiness(s.task, done.__contains__, 0.0)[0] for s in pending.values())

    # -- claims ----------------------------------------------------------------------------------
    def claim(self, agent: str, role: str | None = None, pid: int | None = None) -> tuple[Claim, Task] | None:
        tasks.check_id(agent, "agent")
        suits = roles.load_role(role, self.home) if role else None
        reaped = False
        for _ in range(50):  # a look per round; a round whose candidates were all taken: look again
            refs = self.remote.refs()
            picks = self._candidates(self._listed(refs), suits)
            if not picks:
                if reaped:
                    return None
                self._reap_stale(refs, agent)  # before giving up: stale claims back to pending
                reaped = True  # whoever won each break, look once more
                continue
            for state in picks:
                claim = Claim(state.task.id, agent, state.generation + 1, secrets.token_hex(8), pid, self.host,
                              time.time())
                told = _event("claim", claim.task_id, agent=agent, generation=claim.generation, pid=pid,
                              host=self.host, claimed_at=claim.claimed_at, outputs=state.task.outputs)
                if self._move(state, State("active", state.task, claim.generation, asdict(claim)), told):
                    return claim, state.task
        return None

    def _candidates(self, listed: dict[str, tuple[str, str]], role: roles.Role | None, top: int = 16) -> list[State]:
        """The most urgent ready tasks, best first; within one point of each other in random order,
        so that many claimers at once spread over them (pool.py's order, without the index). Only
        pending records are read; an active task's outputs are those it had while pending here."""
        now = time.time()
        done = {tid for tid, (st, _) in listed.items() if st == "done"}
        states = self._states({tid: v for tid, v in listed.items() if v[0] == "pending"})
        known = {s.task.id: s.task for s in self._read.values()}
        busy = Busy()
        for tid, (st, _) in listed.items():
            if st == "active" and tid in known and known[tid].outputs:
                busy.add(tid, busy_keys(known[tid].outputs))
        def score(s: State) -> tuple[int, float]:
            hit = bool(s.task.outputs) and busy.touches(busy_keys(s.task.outputs))
            rank = effective_priority(self.config, Entry.of(s.task, role), now)
            return int(rank - (self.config.overlap_penalty if hit else 0)), random.random()
        ready = [s for s in states.values() if not any(tasks.readiness(s.task, done.__contains__, now))]
        return sorted(ready, key=score, reverse=True)[:top]

    def _reap_stale(self, refs: dict[str, str], reaper: str) -> list[str]:
        """Reap every active task of ``refs`` whose owner is gone (its heartbeat read from ``refs``)."""
        now = time.time()
        active = dict(sorted(self._states(self._listed(refs, ("active",))).items()))
        beats = self._beats(refs, {_owner(s) for s in active.values()})
        return [tid for tid, s in active.items() if self._stale(s, beats, now) and self._reap(s, reaper)]

    def _beats(self, refs: dict[str, str], agents: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """The last heartbeat of each agent (of ``agents``, or all) that ``refs`` list."""
        wanted = {ref: oid for ref, oid in refs.items() if ref.startswith(NS + "beats/")
                  and (agents is None or ref[len(NS + "beats/"):] in agents)}
        return {ref[len(NS + "beats/"):]: json.loads(text) for ref, text in self.remote.messages(wanted).items()}

    def _stale(self, state: State, beats: dict[str, dict[str, Any]], now: float) -> bool:
        return owner_gone(state.claim or {}, beats.get(_owner(state)), now, self.config.lease_ttl, self.host)

    def _reap(self, state: State, reaper: str) -> bool:
        """Break a stale claim: back to pending under a generation of the reaper's own (so the
        claim after it is N + 2, as on local disk); True for the one process whose push won."""
        task = Task(**asdict(state.task))
        task.skip_count += 1  # no back-off: an owner's death is no sign the task is at fault
        abandoned = (state.claim or {}).get("agent", "unknown")
        note = _note(task.id, reaper, f"claim abandoned by {abandoned} (lease expired or process gone); "
                     f"reaped by {reaper}", "reap")
        told = _event("reap", task.id, agent=reaper, abandoned_by=abandoned, generation=state.generation,
                      skip_count=task.skip_count)
        return self._move(state, State("pending", task, state.generation + 1), note, told)

    def reap(self, reaper: str) -> list[str]:
        return self._reap_stale(self.remote.refs(), reaper)

    def disown(self, agent: str) -> list[str]:
        """Put back, uncounted, every task the nest says ``agent`` holds. For an agent that knows it
        holds none: a claim whose push went through while its answer was lost (an outage mid-push)
        would otherwise be kept alive by the agent's own beats all night."""
        active = self._states(self._listed(self.remote.refs(NS + "tasks/active/*"), ("active",)))
        mine = sorted(tid for tid, s in active.items() if _owner(s) == agent)
        for tid in mine:
            self.release(tid, agent, note=f"{agent} did not know it held this claim (the answer to its claim "
                                          "was lost to an outage); put back uncounted", skip=False)
        return mine

    def current_claim(self, task_id: str) -> Claim | None:
        state = self._state(task_id)
        return Claim(**state.claim) if state and state.status == "active" and state.claim else None

    def holds(self, claim: Claim) -> bool:
        return self.current_claim(claim.task_id) == claim

    def heartbeat(self, agent: str, pid: int | None = None, ledger: Sequence[dict[str, Any]] = (),
                  **info: Any) -> None:
        """The contract's heartbeat; ``ledger``: the agent's model calls since its last beat, put on
        its ledger chain in the same push (a push per beat, not per call; ``published`` says how
        many are there, for the agent's next process)."""
        tasks.check_id(agent, "agent")
        beat = {"agent": agent, "pid": pid, "host": self.host, "ts": time.time(), **info}
        updates: list[tuple[str, str | None, str | None]] = [(NS + f"beats/{agent}", None, self.remote.record(beat))]
        if ledger:
            tip, n = self._ledger_tip(agent)
            new = self.remote.record({"host": self.host, "n": n + len(ledger), "calls": list(ledger)}, tip or None)
            updates.append((NS + f"ledger/{agent}", tip, new))  # the agent's own: only a second process with its id loses
        try:
            pushed = self.remote.push(updates)
        finally:
            if ledger:  # until this push is known to have worked, the chain's head is the nest's to say
                self._tips.pop(agent, None)
        if not pushed:
            raise NestUnreachable(f"agent {agent}'s ledger in the nest {redact(self.url)} is not where this process "
                                  "left it: is the same agent id running on two hosts? (each host's launcher "
                                  "prefixes its ids)")
        if ledger:
            self._tips[agent] = (updates[-1][2] or "", n + len(ledger))

    def _ledger_tip(self, agent: str) -> tuple[str, int]:
        """The head of the agent's ledger chain (MISSING: none yet) and how many calls it holds."""
        if agent not in self._tips:
            ref = NS + f"ledger/{agent}"
            found = self.remote.refs(ref)
            text = self.remote.messages(found).get(ref)
            self._tips[agent] = (found[ref], int(json.loads(text)["n"])) if text else (MISSING, 0)
        return self._tips[agent]

    def published(self, agent: str) -> int:
        """How many of the agent's model calls are on its ledger chain."""
        return self._ledger_tip(tasks.check_id(agent, "agent"))[1]

    def ledger(self) -> list[dict[str, Any]]:
        """Every model call every agent published (with the ``host`` it ran on), oldest first."""
        calls = [{**c, "host": rec.get("host")} for chain in self._chains("ledger/*") for rec in chain
                 for c in rec.get("calls", ())]
        return sorted(calls, key=lambda c: float(c.get("ts", 0) or 0))

    def last_beat(self, agent: str) -> dict[str, Any] | None:
        found = self.remote.messages(self.remote.refs(NS + f"beats/{tasks.check_id(agent, 'agent')}"))
        return json.loads(next(iter(found.values()))) if found else None

    def _owned(self, task_id: str, agent: str, token: str | None, what: str) -> State:
        """The task's active state, whose claim ``agent`` (with ``token``, if given) must hold:
        NotOwner otherwise."""
        state = self._state(task_id)
        claim = state.claim if state and state.status == "active" else None
        if state is None or claim is None or claim["agent"] != agent or (token is not None and claim["token"] != token):
            holder = f"held by {claim['agent']}" if claim else "not claimed"
            raise NotOwner(f"task {task_id!r} is {holder}: {agent}'s claim is over or was never made; only its "
                           f"current owner may {what}")
        return state

    def _end(self, task_id: str, agent: str, token: str | None, status: str,
             change: Callable[[Task], object] | None = None, *records: Any) -> State:
        """Move the owner's task from active to ``status`` (``change`` applied to the task first)
        with ``records`` (or functions of the moved task making them) onto the log."""
        for _ in range(20):
            state = self._owned(task_id, agent, token, "release, finish or fail it")
            task = Task(**asdict(state.task))
            if change is not None:
                change(task)
            told = [rec(task) if callable(rec) else rec for rec in records]
            if self._move(state, State(status, task, state.generation), *told):
                return State(status, task, state.generation)
            # lost: a reaper moved it; the next look says who holds it
        raise NestUnreachable(f"the nest {redact(self.url)} kept refusing to move task {task_id!r}; try again later")

    def release(self, task_id: str, agent: str, note: str | None = None, token: str | None = None,
                skip: bool = True) -> int:
        def count(task: Task) -> None:
            if skip:
                task.skip_count += 1
                tasks.back_off(task, self.config.retry_backoff, self.config.retry_backoff_max, time.time())
        told = [_note(task_id, agent, note, "release")] if note else []
        moved = self._end(task_id, agent, token, "pending", count, *told, lambda t: _event(
            "release", task_id, agent=agent, skip_count=t.skip_count, not_before=t.not_before, note=note))
        return moved.task.skip_count

    def done(self, task_id: str, agent: str, token: str | None = None, **fields: Any) -> None:
        self._end(task_id, agent, token, "done", None, _event("done", task_id, agent=agent, **fields))

    def fail(self, task_id: str, agent: str, note: str, token: str | None = None) -> None:
        self._end(task_id, agent, token, "failed", None, _note(task_id, agent, note, "fail"),
                  _event("fail", task_id, agent=agent, note=note))

    # -- what is going on ------------------------------------------------------------------------
    def survey(self) -> dict[str, Any]:
        """The nest at a glance, from one listing: tasks by status, each claim (its owner, host,
        generation and age) and each agent's last heartbeat. Only active records and heartbeats
        are read."""
        refs = self.remote.refs()
        listed = self._listed(refs)
        counts = {status: sum(1 for st, _ in listed.values() if st == status) for status in STATUSES}
        counts["quarantine"] = sum(1 for ref in refs if ref.startswith(NS + "quarantine/"))
        beats, now = self._beats(refs), time.time()
        claims = [{"task": tid, "generation": s.generation, **{k: (s.claim or {}).get(k) for k in ("agent", "host", "pid")},
                   "claimed_s": round(now - float((s.claim or {}).get("claimed_at", now)), 1),
                   "stale": self._stale(s, beats, now)}
                  for tid, s in sorted(self._states(self._listed(refs, ("active",))).items())]
        agents = []
        for name, beat in sorted(beats.items()):
            age = now - float(beat.get("ts", 0))
            state = ("exited" if beat.get("state") == "exited" else "silent" if age > self.config.lease_ttl
                     else "working" if beat.get("task") else "idle")
            agents.append({**{k: v for k, v in beat.items() if k != "ts"}, "agent": name, "host": beat.get("host"),
                           "task": beat.get("task"), "beat_age_s": round(age, 1), "state": state})
        return {"nest": redact(self.url), "branch": self.config.branch, "tasks": counts, "claims": claims,
                "agents": agents, "stop_requested": NS + "STOP" in refs, "lease_ttl": self.config.lease_ttl}

    # -- landing ---------------------------------------------------------------------------------
    def land(self, claim: Claim, repo: Path, commit: str, branch: str, expected: str | None, **fields: Any) -> bool:
        """Land ``commit`` (in the git repository ``repo``) on the nest's ``branch`` and end ``claim``
        as done, in one atomic push: the branch is expected at ``expected`` (None: not there yet)
        and the task at the claim's own record. So a stale owner can never land (its record was
        replaced when it was reaped: NotOwner), and a branch that moved meanwhile is a lost race
        (False: nothing changed; fetch ``tip``, merge and verify again, land again). True: landed,
        and a ``done`` event (``commit`` and ``fields``) is on the log."""
        state = self._owned(claim.task_id, claim.agent, claim.token, "land its work")
        # The event goes in the same push: a landing whose event was a push of its own, cut off by
        # an outage, was on main with no `done` on the log, and its retry said it did not land.
        done = self.remote.record(State("done", state.task, state.generation, state.claim, landed=commit).data())
        moves = [(task_ref("active", claim.task_id), state.oid, None), (task_ref("done", claim.task_id), MISSING, done)]
        told = _event("done", claim.task_id, agent=claim.agent, commit=commit, **fields)
        branch_move = (f"refs/heads/{branch}", expected or MISSING, commit)
        if not self._push([branch_move, *moves], [told], via=self._via(repo, borrow=True)):
            if not self.holds(claim):
                raise NotOwner(f"task {claim.task_id!r}: {claim.agent}'s claim was broken while it landed; "
                               "its work does not land")
            return False
        return True

    def landed_by(self, claim: Claim) -> str | None:
        """The commit ``claim`` landed its task as, if it did: for a lander whose push went through
        while its answer was lost, and whose retry then found the task done."""
        state = self._state(claim.task_id)
        if state is None or state.status != "done" or (state.claim or {}).get("token") != claim.token:
            return None
        return state.landed

    def _via(self, repo: Path, borrow: bool = False) -> Remote:
        """The nest as the git repository ``repo`` (a clone of the target: the work's commits are
        there, not in our cache) talks to it; ``borrow``: with our cache's objects (records, our
        log chain) too, to push them. Never to fetch: a fetch would skip what the cache has, and
        ``repo`` would refer to objects it does not hold."""
        return Remote(self.url, Git(repo).common_dir(), borrow=self.remote.cache if borrow else None)

    def pull(self, repo: Path, into: str) -> str:
        """Fetch the landing branch into the git repository ``repo`` at ``into`` (a ref of the
        caller's own: processes sharing ``repo`` must not lock one ref); its tip."""
        work = self._via(repo)
        branch = f"refs/heads/{self.config.branch}"
        done = work._talk("-c", "gc.auto=0", "fetch", "-q", "--no-tags", "--no-write-fetch-head", "--", self.url,
                          f"+{branch}:{into}")
        if done.returncode != 0:
            raise work._say(f"give its {branch}", done.stderr)
        return work.git.run("rev-parse", "--verify", f"{into}^{{commit}}").strip()

    def keep(self, repo: Path, ref: str, commit: str) -> None:
        """Put ``commit`` (in the git repository ``repo``) on the nest at ``ref``, so that work no
        host landed is not lost with the host (a conflicted attempt, under refs/stigmergy/conflicts/)."""
        self._via(repo).push([(ref, None, commit)])

    # -- what agents leave for each other ----------------------------------------------------------
    def _push(self, updates: Sequence[tuple[str, str | None, str | None]], records: list[dict[str, Any]],
              via: Remote | None = None) -> bool:
        """``updates`` and ``records`` appended to this process's own log chain, in one atomic push
        (from ``via``, a remote borrowing our cache's objects, if given). Nobody else writes the
        chain, so only ``updates`` can lose a race."""
        if self._pid != os.getpid():  # a new chain for each process, a forked child's too
            self._pid, self._tip = os.getpid(), ""
            self._writer = re.sub(r"[^a-z0-9_-]", "-", f"{self.host.lower()}-{self._pid}-{secrets.token_hex(3)}")
        chain = NS + f"log/{self._writer}"
        for _ in range(2):
            tip = self._tip
            for rec in records:
                tip = self.remote.record({"ts": round(time.time(), 3), **rec}, tip or None)
            log = [(chain, self._tip or MISSING, tip)] if records else []
            lost = (via or self.remote).lost([*updates, *log])
            if not lost:
                self._tip = tip
                return True
            head = self.remote.refs(chain).get(chain, MISSING) if chain in lost else None
            if head is None or head == (self._tip or MISSING):
                break  # ``updates`` lost their race (our chain is where we left it)
            # Our own chain is not where we left it: a push of ours went through though we heard
            # it fail (its answer was lost). The chain goes on from where the nest has it.
            self._tip = head
        if not updates:
            raise NestUnreachable(f"the nest {redact(self.url)} refused this process's own log ({self._writer})")
        return False

    def _chains(self, pattern: str = "log/*") -> list[list[dict[str, Any]]]:
        """Every writer's records, each chain oldest first (``git log``: one writer a chain)."""
        tips = self.remote.refs(NS + pattern)
        self.remote.messages(tips)  # fetches every chain whole
        chains = []
        for tip in tips.values():
            out = self.remote.git.run("log", "--format=%B%x00", tip)
            chains.append([json.loads(m) for m in reversed(out.split("\x00")) if m.strip()])
        return chains

    def add_note(self, task_id: str, agent: str, text: str, kind: str = "note") -> None:
        self._push([], [_note(task_id, agent, text, kind)])

    def notes(self, task_id: str) -> list[dict[str, Any]]:
        return [{"ts": r["ts"], **r["note"]} for r in self._log() if r.get("on") == task_id]

    def event(self, event: str, task: str | None = None, **fields: Any) -> None:
        self._push([], [_event(event, task, **fields)])

    def events(self) -> list[dict[str, Any]]:
        return [{"ts": r["ts"], **r["event"]} for r in self._log() if "event" in r]

    def _log(self) -> list[dict[str, Any]]:
        """Every writer's records merged by time, each writer's in the order it wrote them."""
        return list(heapq.merge(*self._chains(), key=lambda r: float(r["ts"])))

    def request_stop(self, now: bool = False) -> Path:
        self.remote.push([(NS + "STOP", None, self.remote.record({"now": now}))])
        return Path(f"{redact(self.url)} {NS}STOP")

    def stop_requested(self) -> bool:
        return bool(self.remote.refs(NS + "STOP"))


if TYPE_CHECKING:  # mypy checks here that the nest keeps the contract
    from harness.environment import Environment
    _KEEPS_THE_CONTRACT: type[Environment] = Nest
