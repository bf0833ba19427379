"""The JSONL readers every log goes through: a torn or corrupt line is skipped, never fatal."""

from __future__ import annotations

from pathlib import Path

from harness.fsutil import Tail, read_lines

MIXED = (b'{"a": 1}\n'
         b'{"b": 2}, {"c": 3}\n'  # two values on one line: not one event, skipped
         b'[1, 2]\n'  # a value, but no event
         b'\n'
         b'{"torn": \n'
         b'{"d": 4}\n')


def test_read_lines_keeps_the_whole_lines_that_are_objects(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(MIXED)
    assert read_lines(path) == [{"a": 1}, {"d": 4}]
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n')  # the fast path: the lines parsed as one array
    assert read_lines(path) == [{"a": 1}, {"b": 2}]
    path.write_bytes(b'{"a": 1}\n{"b": 2}, {"c": 3}\n')  # valid as one array, but 3 values for 2 lines
    assert read_lines(path) == [{"a": 1}]


def test_a_tail_reads_what_was_appended_and_waits_for_a_line_to_end(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(MIXED)
    tail = Tail(path)
    assert tail.read() == ([{"a": 1}, {"d": 4}], False)
    with open(path, "ab") as f:
        f.write(b'{"e": 5}\n{"f": ')  # the second line is still being written
    assert tail.read() == ([{"e": 5}], False)
    with open(path, "ab") as f:
        f.write(b'6}\n')
    assert tail.read() == ([{"f": 6}], False)
    path.write_bytes(b'{"new": 1}\n')  # replaced by a shorter file: read again from its start
    assert tail.read() == ([{"new": 1}], True)



def test_a_resumed_tail_reads_on_from_where_another_stopped_and_counts_what_it_missed(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    first = Tail(path)
    first.read()
    tail = Tail.resume(path, first.offset, first.seen, first.partial)
    assert tail.behind() == 0
    with open(path, "ab") as f:
        f.write(b'3}\n{"d": 4}\n')
    assert tail.behind() == 2 and tail.read() == ([{"c": 3}, {"d": 4}], False)
    path.write_bytes(b'{"x": 1}\n' * 4)  # replaced by another log as long: no longer the one it read
    assert tail.behind() is None
    path.unlink()
    assert tail.behind() is None and Tail(path).behind() == 0
