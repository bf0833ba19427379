"""Notes: what an attempt leaves for the next claimant, short enough to go into every later prompt.

A note is a line of `notes/<task>.jsonl` (Colony.add_note), and every later prompt for the task
carries its notes. What an attempt says when it gives up can be long (a verify log, a server's
error body), and a note that size pushed a small model over its context window on every later
attempt. So a note keeps its first line (the cause) and its end (where a log says what failed),
the whole text goes to the attempt's run folder, and a prompt shows the newest notes that fit
its budget, saying how many earlier ones it left out.
"""

from __future__ import annotations

from typing import Any

NOTE_CHARS = 800  # the most one note keeps
MIN_NOTE_CHARS = 200  # a prompt's budget leaves at least this much room, or the note is not shown


def brief(text: str, limit: int = NOTE_CHARS) -> str:
    """`text` if it fits in `limit` characters; else its first line and as much of its end as fits."""
    if len(text) <= limit:
        return text
    head = text.partition("\n")[0][: limit // 2]
    tail = text[len(head):][-(limit - len(head) - 40):]
    if "\n" in tail[:-1]:  # start the end at a whole line
        tail = tail[tail.index("\n") + 1:]
    return f"{head}\n[... {len(text) - len(head) - len(tail)} characters left out ...]\n{tail}"


def for_prompt(notes: list[dict[str, Any]], budget: int) -> tuple[list[dict[str, Any]], int]:
    """The newest notes, each brief, that fit in `budget` characters, oldest first; and how many
    earlier notes were left out."""
    shown: list[dict[str, Any]] = []
    room = budget
    for note in reversed(notes):
        if room < MIN_NOTE_CHARS:
            break
        text = brief(str(note.get("text", "")), min(NOTE_CHARS, room))
        room -= len(text)
        shown.append({**note, "text": text})
    shown.reverse()
    return shown, len(notes) - len(shown)
