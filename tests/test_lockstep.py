"""``LockstepGroup``: episodes side by side on simulated clocks, their requests answered in
one batch once every member waits."""

import threading

import numpy as np
import pytest

from runtime.robot.client import LockstepGroup, RequestTimeout
from runtime.robot.testing import ConstantPolicy, RecordingPolicy
from runtime.wire.keys import STATE
from runtime.wire.protocol import ChunkReply, ErrorReply, ObservationRequest

H, A = 4, 2


def request(rid: int, tick: int) -> ObservationRequest:
    return ObservationRequest(
        request_id=rid,
        robot_id="arm",
        tick=tick,
        observation={STATE: np.zeros(A, np.float32)},
        instruction="pick up the cube",
        delay=0,
        execution_horizon=0,
        sampling="plain",
    )


class PickyPolicy(ConstantPolicy):
    """Chunks filled with the request's tick; refuses tick 13."""

    def infer(self, requests):
        if any(r.tick == 13 for r in requests):
            raise ValueError("tick 13 is refused")
        return super().infer(requests)


def wait_in_threads(members, ticks) -> list:
    """Each member submits a request for its tick and waits for the reply in its own thread."""
    replies = [None] * len(members)

    def run(i: int) -> None:
        members[i].submit(request(i + 1, ticks[i]))
        replies[i] = members[i].poll(5.0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(members))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies


def test_the_members_requests_are_answered_in_one_batch():
    policy = RecordingPolicy(ConstantPolicy(H, A, fill=None))
    group = LockstepGroup(policy)
    members = [group.member() for _ in range(3)]
    replies = wait_in_threads(members, [3, 5, 7])
    assert policy.batch_sizes == [3]
    for reply, tick in zip(replies, [3, 5, 7], strict=True):
        assert isinstance(reply, ChunkReply) and reply.tick == tick
        assert np.all(reply.actions == tick)
    assert group.batches == 1
    metadata = members[0].metadata()
    assert metadata.model_id == "constant" and metadata.requests_served == 3


def test_a_running_member_holds_the_batch_until_it_waits_or_leaves():
    policy = RecordingPolicy(ConstantPolicy(H, A, fill=None))
    group = LockstepGroup(policy)
    waiting, running = group.member(), group.member()
    waiting.submit(request(1, 3))
    assert waiting.poll(0.1) is None  # the other member is still running its episode
    assert policy.batch_sizes == []
    running.close()  # its episode ended
    reply = waiting.poll(1.0)
    assert isinstance(reply, ChunkReply) and reply.tick == 3
    assert policy.batch_sizes == [1]


def test_a_request_that_fails_does_not_fail_the_others_in_its_batch():
    policy = RecordingPolicy(PickyPolicy(H, A, fill=None))
    group = LockstepGroup(policy)
    good, bad = wait_in_threads([group.member(), group.member()], [5, 13])
    assert policy.batch_sizes == [2, 1, 1]  # the batch, then each request alone
    assert isinstance(good, ChunkReply) and np.all(good.actions == 5)
    assert isinstance(bad, ErrorReply) and bad.code == "bad_request"
    assert "tick 13" in bad.message


def test_a_poll_without_waiting_does_not_trigger_the_batch():
    policy = RecordingPolicy(ConstantPolicy(H, A))
    member = LockstepGroup(policy).member()
    member.submit(request(1, 0))
    assert member.poll(0.0) is None  # a controller checking before its chunk is due
    assert policy.batch_sizes == []
    assert isinstance(member.poll(1.0), ChunkReply)


def test_an_unanswered_request_times_out():
    group = LockstepGroup(ConstantPolicy(H, A), timeout_s=0.2)
    waiting, _running = group.member(), group.member()  # the other never waits nor leaves
    waiting.submit(request(1, 0))
    with pytest.raises(RequestTimeout):
        while True:
            waiting.poll(0.05)
