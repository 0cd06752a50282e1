"""Three parties in one process compute what three processes compute: the same bytes,
messages and rounds, and the same outputs up to the last-place rounding of each exact
truncation (its direction depends on the random masks, which differ from run to run in any
cluster), for the op workloads and for BERT-base and GPT-2 forwards."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

import securetorch as puma
from benchmarks.nonlinear import workloads
from securetorch.comm.stats import total

from ..protocols.test_workload_costs import EXPECTED, _run

transformers.logging.set_verbosity_error()


def _counters(stats: puma.CommStats) -> tuple[int, int, int, int]:
    return stats.bytes_sent, stats.bytes_received, stats.messages, stats.rounds


@pytest.mark.parametrize("name", list(EXPECTED))
def test_op_workloads_are_the_same_in_one_process(sim, cluster, name) -> None:
    x, params, _, relative = workloads(torch.Generator().manual_seed(0))[name]
    threads = sim.run(_run, name, x, params)
    processes = cluster.run(_run, name, x, params)
    assert [_counters(cost) for _, cost in threads] == [_counters(cost) for _, cost in processes]
    diff = (threads[0][0] - processes[0][0]).abs()
    if relative:
        diff = diff / processes[0][0].abs()
    assert float(diff.max()) <= 1e-4  # a few units of 2^-18 through the op's truncations


def _models() -> dict[str, tuple[torch.nn.Module, str]]:
    torch.manual_seed(0)  # full width, one layer (every layer runs the same protocols)
    return {
        "bert-base": (BertModel(BertConfig(num_hidden_layers=1)).eval(), "last_hidden_state"),
        "gpt2": (GPT2LMHeadModel(GPT2Config(n_layer=1)).eval(), "logits"),
    }


def test_bert_base_and_gpt2_forwards_are_the_same_in_one_process(cluster) -> None:
    ids = torch.randint(1000, 20000, (1, 16), generator=torch.Generator().manual_seed(1))
    with puma.InProcessCluster() as inprocess:
        for name, (model, output) in _models().items():
            runs = []
            for parties in (inprocess, cluster):
                secure_model = puma.secure(model, cluster=parties)
                parties.reset_stats()
                out = getattr(secure_model(input_ids=ids), output)
                runs.append((out, [_counters(s) for s in parties.stats()], total(parties.stats())))
                secure_model.close()
            (threads, counted_t, total_t), (processes, counted_p, _) = runs
            assert counted_t == counted_p, name
            assert total_t.rounds > 100 and total_t.bytes_sent > 10**7  # a real forward was counted
            with torch.no_grad():
                want = getattr(model(input_ids=ids), output)
            assert float((threads - processes).abs().max()) <= 2e-3, name
            assert float((threads - want).abs().max()) <= 1e-2, name


def test_closing_in_process_parties_gives_their_freed_memory_back(monkeypatch) -> None:
    """Each party thread allocates from a malloc arena of its own, which glibc keeps after
    the thread frees it: an ``InProcessCluster`` and a ``Simulator`` trim the arenas when they
    close (a closed BERT-base 128-token cluster otherwise left its process gigabytes larger)."""
    from securetorch.runtime import libc, simulator

    trims: list[int] = []

    class Libc:
        def malloc_trim(self, pad: int) -> int:
            trims.append(pad)
            return 1

    monkeypatch.setattr(libc, "LIBC", Libc())
    with puma.InProcessCluster() as cluster:
        cluster.run(lambda v: (v * v).reveal(), puma.private(torch.ones(3)))
        assert trims == []
    assert trims == [0]
    with simulator.Simulator() as sim:
        sim.run(lambda v: (v * v).reveal(), puma.private(torch.ones(3)))
        assert trims == [0]
    assert trims == [0, 0]
