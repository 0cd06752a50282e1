"""A long-lived cluster stays healthy: many consecutive secure calls do not grow the parties'
memory, and bad private inputs are refused before anything is sent (malformed messages:
``tests/security/test_boundary.py``)."""

from __future__ import annotations

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


@pytest.mark.slow
def test_100_secure_calls_do_not_grow_party_memory(cluster) -> None:
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
        for _ in range(100):
            out = secure_model(input_ids=ids)
        after = cluster.run(_rss_kib)
    finally:
        secure_model.close()
    with torch.no_grad():
        assert float((out.last_hidden_state - model(input_ids=ids).last_hidden_state).abs().max()) <= 1e-2
    for rank, (b, a) in enumerate(zip(before, after, strict=True)):
        assert a < b * 1.05, f"party {rank}: RSS grew from {b} KiB to {a} KiB over 100 calls"


def test_bad_private_inputs_are_refused_before_anything_is_sent(cluster) -> None:
    cluster.reset_stats()
    for bad, why in ((float("nan"), "finite"), (float("inf"), "finite"), (2.0**50, "fixed-point range")):
        with pytest.raises(ValueError, match=why):
            cluster.run(lambda v: v * 2, puma.private(torch.tensor([1.0, bad])))
    assert total(cluster.stats()).messages == 0  # no party received anything
    assert cluster.run(puma.rank) == [0, 1, 2]
