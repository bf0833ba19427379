"""Retry policy, Retry-After parsing and the shared cool-down file."""

from __future__ import annotations

import email.utils
import json
import random
import threading
from pathlib import Path

import pytest

from harness.errors import (ColonyFault, ModelAuthError, ModelBadRequest, ModelError, ModelNotFound,
                            ModelRateLimited, ModelTimeout, ModelTransient)
from harness.errors import UsageError
from harness.models.base import Reply, Request
from harness.models.retry import CoolDown, RetryingModel, RetryPolicy, error_for_status, parse_retry_after

REQ = Request(system="s", messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}], tools=[])


class FakeClock:
    """Time that only moves when someone sleeps."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Flaky:
    """A Model that raises the given errors in turn, then answers."""

    name = "flaky/test"

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def complete(self, request: Request) -> Reply:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Reply(text="ok")


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # ms is more precise: it wins
        ({"retry-after-ms": "junk", "retry-after": "3"}, 3.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-4"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str] | None, expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after({"retry-after": email.utils.formatdate(now + 30, usegmt=True)}, now=now) == pytest.approx(
        30
    )
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 30, usegmt=True)}, now=now) == 0.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, ModelRateLimited),
        (408, ModelTransient),
        (409, ModelTransient),
        (500, ModelTransient),
        (502, ModelTransient),
        (503, ModelTransient),
        (504, ModelTransient),
        (529, ModelTransient),
        (400, ModelBadRequest),
        (401, ModelAuthError),
        (403, ModelAuthError),
        (404, ModelNotFound),
        (422, ModelBadRequest),
        (418, ModelError),
    ],
)
def test_error_for_status(status: int, kind: type[ModelError]) -> None:
    err = error_for_status(status, "detail", {"retry-after": "7"})
    assert type(err) is kind
    # Only what no request can fix stops the colony, and its message names the fix.
    assert isinstance(err, ColonyFault) == (status in (401, 403, 404))
    if isinstance(err, ColonyFault):
        assert "fix:" in str(err) and ("API key" in str(err) or "model name" in str(err))
    if isinstance(err, ModelTransient):
        assert err.status == status and err.retry_after == 7.0


# --------------------------------------------------------------------------- CoolDown


def test_cooldown_only_ever_extends(tmp_path: Path) -> None:
    clock = FakeClock()
    cd = CoolDown(tmp_path / "cd.json", clock=clock.time, sleep=clock.sleep)
    assert cd.until() == 0.0 and cd.remaining() == 0.0
    assert cd.extend(10) == 1010.0
    assert cd.extend(3) == 1010.0  # shorter: ignored
    assert json.loads((tmp_path / "cd.json").read_text()) == {"until": 1010.0}
    assert cd.extend(20) == 1020.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cd.json", "cd.json.lock"]  # no tmp files left


def test_cooldown_tolerates_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "cd.json"
    path.write_text('{"until": 12')
    cd = CoolDown(path, clock=lambda: 50.0)
    assert cd.until() == 0.0
    assert cd.extend(5) == 55.0
    assert cd.until() == 55.0


def test_concurrent_extends_keep_the_maximum(tmp_path: Path) -> None:
    path = tmp_path / "cd.json"
    amounts = list(range(60))
    random.Random(7).shuffle(amounts)

    def extend(seconds: int) -> None:
        CoolDown(path, clock=lambda: 1000.0).extend(seconds)

    threads = [threading.Thread(target=extend, args=(s,)) for s in amounts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert CoolDown(path).until() == 1059.0


def test_cooldown_wait_rereads_the_file(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "cd.json"
    cd = CoolDown(path, clock=clock.time, sleep=clock.sleep, poll=1.0)
    other_agent = CoolDown(path, clock=clock.time)
    cd.extend(2.5)

    def sleep_and_meanwhile_someone_extends(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.slept) == 1:
            other_agent.extend(4)  # until: 1001 + 4 = 1005

    cd._sleep = sleep_and_meanwhile_someone_extends
    waited = cd.wait()
    assert waited == pytest.approx(5.0) and clock.now == pytest.approx(1005.0)
    assert max(clock.slept) <= 1.0  # polled, so the extension was noticed


# --------------------------------------------------------------------------- RetryingModel


def test_transient_errors_are_retried_with_growing_jittered_waits() -> None:
    clock = FakeClock()
    inner = Flaky(ModelTransient("a", status=500), ModelTransient("b", status=503), ModelTransient("c"))
    model = RetryingModel(inner, policy=RetryPolicy(attempts=4, base_wait=1.0, max_wait=60), sleep=clock.sleep)
    assert model.complete(REQ).text == "ok"
    assert inner.calls == 4 and model.name == "flaky/test"
    # Full jitter: attempt n waits uniformly in [0, base * 2**(n-1)].
    assert [w <= cap for w, cap in zip(clock.slept, [1, 2, 4], strict=True)] == [True, True, True]


def test_retries_are_bounded_and_reraise_our_error() -> None:
    clock = FakeClock()
    inner = Flaky(*[ModelTransient(f"e{i}", status=502) for i in range(10)])
    model = RetryingModel(inner, policy=RetryPolicy(attempts=3, base_wait=0.01), sleep=clock.sleep)
    with pytest.raises(ModelTransient, match="e2"):
        model.complete(REQ)
    assert inner.calls == 3


@pytest.mark.parametrize("error", [ModelAuthError("nope"), ModelError("404")])
def test_permanent_errors_are_not_retried(error: ModelError) -> None:
    inner = Flaky(error)
    with pytest.raises(type(error)):
        RetryingModel(inner, sleep=FakeClock().sleep).complete(REQ)
    assert inner.calls == 1


def test_429_retry_after_is_honoured_and_shared(tmp_path: Path) -> None:
    clock = FakeClock()
    cd = CoolDown(tmp_path / "cd.json", clock=clock.time, sleep=clock.sleep)
    inner = Flaky(ModelRateLimited("slow down", status=429, retry_after=3.0))
    model = RetryingModel(inner, policy=RetryPolicy(base_wait=0.01), cooldown=cd, sleep=clock.sleep)
    assert model.complete(REQ).text == "ok"
    assert 3.0 <= clock.slept[0] <= 3.3  # retry-after plus at most 10 % jitter
    assert cd.until() == pytest.approx(1003.0)


def test_long_retry_after_is_capped_for_us_but_not_for_the_colony(tmp_path: Path) -> None:
    clock = FakeClock()
    cd = CoolDown(tmp_path / "cd.json", clock=clock.time, sleep=clock.sleep)
    inner = Flaky(ModelRateLimited("slow down", status=429, retry_after=100.0))
    model = RetryingModel(inner, policy=RetryPolicy(max_wait=2.0), cooldown=cd, sleep=clock.sleep)
    model.complete(REQ)
    assert clock.slept[0] == 2.0
    # The next attempt still waited out the full 100 s through the cool-down file.
    assert clock.now == pytest.approx(1100.0)


def test_429_without_retry_after_still_cools_the_colony(tmp_path: Path) -> None:
    clock = FakeClock()
    cd = CoolDown(tmp_path / "cd.json", clock=clock.time, sleep=clock.sleep)
    inner = Flaky(ModelRateLimited("slow down", status=429))
    policy = RetryPolicy(base_wait=0.01, default_cooldown=4.0)
    RetryingModel(inner, policy=policy, cooldown=cd, sleep=clock.sleep).complete(REQ)
    assert cd.until() == pytest.approx(1004.0)


def test_server_errors_do_not_touch_the_cooldown(tmp_path: Path) -> None:
    cd = CoolDown(tmp_path / "cd.json")
    inner = Flaky(ModelTransient("boom", status=500, retry_after=0.0))
    RetryingModel(inner, cooldown=cd, sleep=FakeClock().sleep).complete(REQ)
    assert not (tmp_path / "cd.json").exists()


def test_a_429_on_the_last_attempt_still_cools_the_colony(tmp_path: Path) -> None:
    clock = FakeClock()
    cd = CoolDown(tmp_path / "cd.json", clock=clock.time, sleep=clock.sleep)
    inner = Flaky(ModelRateLimited("slow down", status=429, retry_after=30.0))
    with pytest.raises(ModelRateLimited):
        RetryingModel(inner, policy=RetryPolicy(attempts=1), cooldown=cd, sleep=clock.sleep).complete(REQ)
    assert cd.until() == pytest.approx(1030.0)


def test_an_outage_cools_the_colony_longer_each_time_until_a_call_succeeds(tmp_path: Path) -> None:
    clock = FakeClock()
    cd = CoolDown(tmp_path / "cd.json", clock=clock.time, sleep=clock.sleep)
    policy = RetryPolicy(attempts=2, base_wait=0.01, outage_cooldown=10.0, max_outage_cooldown=25.0)
    holds = []
    for _ in range(3):
        down = Flaky(*[ModelTransient("connection refused")] * 2)
        with pytest.raises(ModelTransient):
            RetryingModel(down, policy=policy, cooldown=cd, sleep=clock.sleep).complete(REQ)
        holds.append(round(cd.until() - clock.time(), 3))
        clock.sleep(cd.remaining())
    assert holds == [10.0, 20.0, 25.0] and cd.outages() == 3  # doubling, capped
    RetryingModel(Flaky(), policy=policy, cooldown=cd, sleep=clock.sleep).complete(REQ)
    assert cd.outages() == 0  # a success starts the doubling over


def test_retry_policy_from_model_options_refuses_unknown_keys() -> None:
    assert RetryPolicy.from_options({"attempts": 2, "base_wait": 0.1}) == RetryPolicy(attempts=2, base_wait=0.1)
    with pytest.raises(UsageError, match="unknown key.*atempts"):
        RetryPolicy.from_options({"atempts": 2})


# --------------------------------------------------------------------------- Request.timeout


class Slow(Flaky):
    """A Flaky model that also notes the time each attempt was given."""

    def __init__(self, *errors: Exception) -> None:
        super().__init__(*errors)
        self.given: list[float | None] = []

    def complete(self, request: Request) -> Reply:
        self.given.append(request.timeout)
        return super().complete(request)


def test_the_deadline_caps_attempts_and_stops_before_a_wait_it_cannot_afford(tmp_path: Path) -> None:
    clock = FakeClock()
    inner = Slow(*[ModelTransient("busy", status=503, retry_after=3.0) for _ in range(5)])
    cd = CoolDown(tmp_path / "cd.json", clock=clock.time, sleep=clock.sleep)
    model = RetryingModel(inner, policy=RetryPolicy(attempts=6, max_wait=60), cooldown=cd,
                          sleep=clock.sleep, clock=clock.time)
    events: list[dict[str, object]] = []
    with pytest.raises(ModelTimeout, match="no time left to retry"):
        model.complete(Request(system="s", messages=[], tools=[], timeout=5.0, on_event=events.append))
    assert inner.calls == 2 and len(clock.slept) == 1  # 3 s fit once; a second 3 s wait would not
    assert inner.given[0] == 5.0 and inner.given[1] is not None and inner.given[1] <= 5.0 - 3.0
    assert [e["kind"] for e in events] == ["retry", "timeout"]
    assert events[0]["wait"] == pytest.approx(clock.slept[0], abs=1e-3) and events[0]["attempt"] == 1
    assert not (tmp_path / "cd.json").exists()  # a deadline is not an outage


def test_without_a_timeout_nothing_changes() -> None:
    clock = FakeClock()
    inner = Slow(ModelTransient("a", status=500))
    model = RetryingModel(inner, policy=RetryPolicy(base_wait=0.01), sleep=clock.sleep, clock=clock.time)
    assert model.complete(REQ).text == "ok"
    assert inner.given == [None, None]


def test_a_listener_that_raises_does_not_break_the_call() -> None:
    def broken(event: dict[str, object]) -> None:
        raise RuntimeError("listener bug")

    clock = FakeClock()
    inner = Flaky(ModelTransient("a", status=500))
    model = RetryingModel(inner, policy=RetryPolicy(base_wait=0.01), sleep=clock.sleep, clock=clock.time)
    assert model.complete(Request(system="s", messages=[], tools=[], on_event=broken)).text == "ok"
