"""The cost report: per-module, per-op exact bytes and rounds that add up to the counters."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

import securetorch as puma
from securetorch.comm.stats import total
from securetorch.session import costs

transformers.logging.set_verbosity_error()

GPT2 = {"vocab_size": 120, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64, "bos_token_id": 0, "eos_token_id": 1}  # fmt: skip


@pytest.fixture(scope="module")
def gpt2(cluster):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**GPT2)).eval()
    secure_model = puma.secure(model, cluster=cluster)
    yield secure_model
    secure_model.close()


def _recording(cluster) -> list[bool]:
    return cluster.run(lambda: costs.active() is not None)


def test_report_adds_up_to_the_counters_per_layer_and_op(cluster, gpt2) -> None:
    ids = torch.randint(3, 120, (1, 7), generator=torch.Generator().manual_seed(1))
    cluster.reset_stats()
    with cluster.cost_report() as report:
        assert _recording(cluster) == [True, True, True]
        gpt2(input_ids=ids)
    counted = total(cluster.stats())
    assert _recording(cluster) == [False, False, False]
    # every byte and round of the call happens inside a recorded op (the _recording probe
    # exchanges nothing)
    assert report.total()["bytes"] == counted.bytes_sent
    assert report.total()["rounds"] == counted.rounds
    layers = {r["layer"]: r for r in report.by("layer")}
    assert {"transformer.h.0", "transformer.h.1", "lm_head"} <= set(layers)
    per_module = {(r["module"], r["op"]): r for r in report.records}
    # the two blocks run the same protocols on the same shapes: identical exact costs, but
    # for block 1's first LayerNorm, whose input (block 0's output, a product still owing its
    # truncation) is truncated with its row means: the same rounds as block 0's, more bytes
    for (module, op), cost in per_module.items():
        if module.startswith("transformer.h.0") and module != "transformer.h.0.ln_1":
            twin = per_module[module.replace("h.0", "h.1", 1), op]
            assert (cost["bytes"], cost["rounds"], cost["calls"]) == (twin["bytes"], twin["rounds"], twin["calls"])
    first, second = (per_module[f"transformer.h.{i}.ln_1", "layer_norm"] for i in (0, 1))
    assert second["rounds"] == first["rounds"] > 0 and second["bytes"] > first["bytes"]
    ops = {r["op"]: r for r in report.by("op")}
    assert {"softmax", "layer_norm", "gelu", "addmm", "embedding_lookup", "outputs"} <= set(ops)
    assert ops["layer_norm"]["calls"] == 2 * 2 + 1  # two per block and the final one
    # the product's truncation is owed until split reads its shares
    assert per_module["transformer.h.0.attn.c_attn", "addmm"]["rounds"] == 0
    assert per_module["transformer.h.0.attn", "split"]["rounds"] == 2
    assert all(r["seconds"] >= 0 and r["compute_seconds"] >= 0 for r in report.records)


def test_generation_books_the_secure_argmax(cluster, gpt2) -> None:
    ids = torch.randint(3, 120, (1, 5), generator=torch.Generator().manual_seed(2))
    cluster.reset_stats()
    with cluster.cost_report() as report:
        gpt2.generate(ids, max_new_tokens=2)
    assert report.total()["bytes"] == total(cluster.stats()).bytes_sent
    argmax = [r for r in report.records if r["op"] == "argmax"]
    assert len(argmax) == 1 and argmax[0]["calls"] == 2 and argmax[0]["rounds"] > 0


def test_projection_and_table(cluster, gpt2) -> None:
    with cluster.cost_report() as report:
        gpt2(input_ids=torch.tensor([[5, 6, 7]]))
    t = report.total()
    lan = report.projected_seconds(bandwidth_bits_per_s=1e9, rtt_s=1e-3)
    assert lan == pytest.approx(t["compute_seconds"] + t["rounds"] * 1e-3 + t["bytes"] * 8 / 1e9)
    wan = report.projected_seconds(bandwidth_bits_per_s=1e8, rtt_s=40e-3)
    assert wan > lan
    table = report.table(by=("op",))
    assert table.splitlines()[0] == "| op | calls | seconds | compute_seconds | bytes | rounds |"
    assert any(line.startswith("| softmax |") for line in table.splitlines())
    with pytest.raises(ValueError, match="group by module, layer or op"):
        report.by("party")


def test_layer_names() -> None:
    assert costs.layer_of("transformer.h.3.attn.c_attn") == "transformer.h.3"
    assert costs.layer_of("bert.encoder.layer.11.output.dense") == "bert.encoder.layer.11"
    assert costs.layer_of("lm_head") == "lm_head"
    assert costs.layer_of("") == ""
    assert costs.op_name("torch.Tensor.__matmul__") == "matmul"
    assert costs.op_name("torch.nn.functional.softmax") == "softmax"
