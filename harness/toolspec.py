"""The tools' vocabulary: their names, their schemas (Anthropic style) and the check of a call's
input against them, and the marker that starts a verify failure sent back to the model.

The ground floor both sides of a tool call stand on: the toolbox that runs the calls (tools.py),
the loop that sends the results (toolloop.py) and the scripted model that makes calls from a
script (models/scripted.py) import this and nothing heavier.
"""

from __future__ import annotations

from typing import Any

from harness.models.base import ToolSpec

BASH = "bash"
EDIT = "str_replace_based_edit_tool"
CREATE_TASK = "create_task"
ADD_NOTE = "add_note"
FINISH = "finish"

# Starts the user message that carries a verify failure; the scripted model keys on it.
VERIFY_FAILURE_MARKER = "[stigmergy:verify-failed]"

TOOL_SPECS: list[ToolSpec] = [
    ToolSpec(
        name=BASH,
        description=(
            "Run a shell command (bash -c) in the repository worktree and get its output "
            "(stdout and stderr merged, long output shortened) and exit code. Each call is a fresh "
            "shell: cd and exports do not carry over. Commands have a time limit; background "
            "processes still running when the command returns are killed. No interactive input. "
            "It may run in a sandbox: then only the worktree and /tmp are writable and git's own data "
            "is read-only (status, diff and log work): do not git add or commit, the harness commits "
            "your changes itself."
        ),
        input_schema={
            "type": "object",
            "properties": {"command": {"type": "string", "description": "The command to run."}},
            "required": ["command"],
        },
    ),
    ToolSpec(
        name=EDIT,
        description=(
            "View, create and edit files in the worktree. view: a file with line numbers (optional "
            "view_range [start, end], end -1 = to the end) or a directory two levels deep. create: "
            "write file_text to path (overwrites). str_replace: replace old_str, which must occur "
            "exactly once, with new_str. insert: insert insert_text after line insert_line (0 = at "
            "the top). Paths are relative to the worktree or absolute inside it."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert"]},
                "path": {"type": "string", "description": "File or directory path."},
                "file_text": {"type": "string", "description": "create: the whole file content."},
                "old_str": {"type": "string", "description": "str_replace: exact text to replace."},
                "new_str": {"type": "string", "description": "str_replace: replacement text."},
                "insert_line": {"type": "integer", "description": "insert: line to insert after."},
                "insert_text": {"type": "string", "description": "insert: text to insert."},
                "view_range": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "description": "view: [start, end] line numbers, 1-based; end -1 = last line.",
                },
            },
            "required": ["command", "path"],
        },
    ),
    ToolSpec(
        name=CREATE_TASK,
        description=(
            "File a new task for the colony when you find work outside your current task (a bug, "
            "a missing piece, a follow-up). Another agent will pick it up."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "title": {"type": "string", "description": "One line, at most 200 characters."},
                "body": {"type": "string", "description": "What to do and how to tell it is done."},
                "priority": {"type": "integer", "minimum": 0, "maximum": 100},
                "role": {"type": "string", "description": "The name of the role that should do it, e.g. coder, "
                         "tester, documenter (optional)."},
                "kind": {"type": "string", "description": "task (the default), review or idea."},
                "inputs": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Repository paths it reads (relative, e.g. src/app.py or tests/*.py).",
                },
                "outputs": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Repository paths it will change (relative, e.g. src/app.py, docs/).",
                },
            },
            "required": ["title"],
        },
    ),
    ToolSpec(
        name=ADD_NOTE,
        description=(
            "Leave a note on the current task for whoever works on it next: findings, dead ends, "
            "approaches that failed."
        ),
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    ),
    ToolSpec(
        name=FINISH,
        description="Call when the task is done, or with stuck: true when you cannot do it: ends this attempt.",
        input_schema={
            "type": "object",
            "properties": {
                "summary": {"type": "string", "description": "What you did and why (stuck: what you tried, "
                            "what failed and what the next attempt should try)."},
                "stuck": {"type": "boolean", "description": "true: you could not do the task. Nothing you "
                          "changed lands; the task is released for another attempt with your summary as its note."},
            },
            "required": ["summary"],
        },
    ),
]


def schema_problem(schema: dict[str, Any], data: Any) -> str | None:
    """The first way ``data`` breaks our (simple, flat) tool schemas, or None when it fits."""
    if not isinstance(data, dict):
        return "the input must be a JSON object"
    for name in schema.get("required", []):
        if data.get(name) is None:
            return f"missing required field {name!r}"
    for name, prop in schema["properties"].items():
        value = data.get(name)
        if value is None:
            continue
        if not _is_type(value, prop["type"]):
            return f"field {name!r} must be of type {prop['type']}, got {type(value).__name__}"
        if "enum" in prop and value not in prop["enum"]:
            return f"field {name!r} must be one of {prop['enum']}, got {value!r}"
        if "minimum" in prop and value < prop["minimum"] or "maximum" in prop and value > prop["maximum"]:
            return f"field {name!r} must be between {prop.get('minimum')} and {prop.get('maximum')}"
        item_type = prop.get("items", {}).get("type")
        if item_type and not all(_is_type(item, item_type) for item in value):
            return f"field {name!r} must be a list of {item_type}"
    return None


def _is_type(value: Any, json_type: str) -> bool:
    if json_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if json_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    python_type: dict[str, type] = {"string": str, "array": list, "object": dict, "boolean": bool}
    return isinstance(value, python_type[json_type])
