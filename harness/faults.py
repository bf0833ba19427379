"""The FAULT pheromone: a configuration fault no task can fix stops the whole colony.

``.stigmergy/FAULT`` (json: kind, message, agent, ts) is created once, by the first agent that
meets such a fault (the verify command cannot run, the API key is refused, the model or endpoint
does not exist). Create-only, so the first message stays. Every agent that sees it releases its
claim without counting it and exits; the launcher restarts nothing, prints the message once and
exits 2. A relaunch removes it (the user has fixed the cause, or wants to see it again).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import ColonyFault
from harness.redact import redact

NAME = "FAULT"


def path(home: Path) -> Path:
    return home / NAME


def record(home: Path, fault: ColonyFault, agent: str, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Lay FAULT unless one is there; the fault that stands (ours, or the one laid first)."""
    # Providers redact their messages already; this is the last line of defence for the key.
    data = {"kind": fault.kind, "message": redact(str(fault), tuple(secrets)), "agent": agent,
            "ts": round(time.time(), 3)}
    tmp = home / f".{NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    try:
        os.link(tmp, path(home))  # create-only: the first agent to see the fault names it
    except FileExistsError:
        return read(home) or data
    finally:
        tmp.unlink(missing_ok=True)
    return data


def read(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path(home).read_text())
    except FileNotFoundError:
        return None
    except ValueError:  # torn or hand-written: still a fault, the file says so
        return {"kind": "unknown", "message": f"{path(home)} is not valid JSON; remove it and relaunch"}
    return data if isinstance(data, dict) else {"kind": "unknown", "message": str(data)}


def clear(home: Path) -> dict[str, Any] | None:
    """Remove FAULT; the fault it held, if any."""
    old = read(home)
    path(home).unlink(missing_ok=True)
    return old
