"""A long-lived cluster stays healthy: malformed control messages are dropped, and many
consecutive secure calls do not grow the parties' memory."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from transformers import BertConfig, BertModel

import securetorch as puma
from securetorch.comm.stats import total

transformers.logging.set_verbosity_error()


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_malformed_control_messages_are_answered_not_fatal(cluster) -> None:
    """Garbage on the control socket (too few frames, bad kinds, headers that are not JSON
    objects, ids out of range, malformed argument trees, the old ``setup``/``run`` forms) is
    logged and answered with an error: every party keeps serving."""
    session = cluster.session
    garbage = [
        [b""],
        [b"run"],
        [b"run", b"not-a-number", b"x"],
        [b"setup", b"{not json"],
        [b"setup", b"[]"],
        [b"\xff" * 40],
        [b"forward", b"[]"],
        [b"forward", json.dumps({"request": -1, "session": session, "args": {}}).encode()],
        [b"run", json.dumps({"request": 10**9, "session": -1, "args": {}}).encode()],
        [b"stats", json.dumps({"request": 10**9, "session": session, "args": {"dict": [[{"tensor": 7}, 1]]}}).encode()],
        [
            b"describe",
            json.dumps(
                {"request": 10**9 + 1, "session": session, "args": {"dict": [["name", {"secret": 1}]]}}
            ).encode(),
        ],
        [b"forward", json.dumps({"request": 10**9 + 2, "session": session, "args": "x" * 10}).encode(), b"\x00"],
    ]
    for r in range(3):
        for frames in garbage:
            cluster._sockets[r].send_multipart(frames)
    assert cluster.run(puma.rank) == [0, 1, 2]  # every party is alive and serves the next job
    x = torch.arange(6.0).reshape(2, 3)
    assert torch.allclose(cluster.run(lambda v: v * 2, puma.private(x))[0], x * 2, atol=1e-4)


@pytest.mark.slow
def test_200_secure_calls_do_not_grow_party_memory(cluster) -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = BertModel(config).eval()
    secure_model = puma.secure(model, cluster=cluster)
    ids = torch.randint(0, 100, (1, 4), generator=torch.Generator().manual_seed(1))
    try:
        for _ in range(20):  # warm up: allocator pools, caches of per-size plans
            secure_model(input_ids=ids)
        before = cluster.run(_rss_kib)
        for _ in range(200):
            out = secure_model(input_ids=ids)
        after = cluster.run(_rss_kib)
    finally:
        secure_model.close()
    with torch.no_grad():
        assert float((out.last_hidden_state - model(input_ids=ids).last_hidden_state).abs().max()) <= 1e-2
    for rank, (b, a) in enumerate(zip(before, after, strict=True)):
        assert a < b * 1.05, f"party {rank}: RSS grew from {b} KiB to {a} KiB over 200 calls"


def test_bad_private_inputs_are_refused_before_anything_is_sent(cluster) -> None:
    cluster.reset_stats()
    for bad, why in ((float("nan"), "finite"), (float("inf"), "finite"), (2.0**50, "fixed-point range")):
        with pytest.raises(ValueError, match=why):
            cluster.run(lambda v: v * 2, puma.private(torch.tensor([1.0, bad])))
    assert total(cluster.stats()).messages == 0  # no party received anything
    assert cluster.run(puma.rank) == [0, 1, 2]
