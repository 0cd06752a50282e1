"""Vision transformers: the pixels are the caller's secret (fixed point), the patch
convolution runs on secret pixels with a secret kernel, and the model's own embeddings,
class token and positions follow. Against plaintext float32 on two images."""

from __future__ import annotations

import pytest
import torch

import securetorch as puma
from benchmarks.coverage import VISION, build, images


@pytest.mark.parametrize("name", list(VISION))
def test_a_vision_transformer_matches_plaintext_on_secret_pixels(cluster, name) -> None:
    model = build(name, VISION[name])
    pixels = images()
    secure_model = puma.secure(model, cluster=cluster)
    try:
        got = secure_model(pixel_values=pixels)
    finally:
        secure_model.close()
    with torch.no_grad():
        want = model(pixel_values=pixels)
    fields = [f for f in ("last_hidden_state", "pooler_output", "logits") if want.get(f) is not None]
    assert sorted(got.keys()) == sorted(fields)  # never hidden states of the layers
    for field in fields:
        assert got[field].shape == want[field].shape
        assert float((got[field] - want[field]).abs().max()) <= 0.02


def test_a_vision_model_refuses_other_inputs_before_sending(cluster) -> None:
    model = build("ViTForImageClassification", VISION["ViTForImageClassification"])
    secure_model = puma.secure(model, cluster=cluster)
    before = sum(s.messages for s in cluster.stats())
    try:
        with pytest.raises(puma.InputError, match=r"pixel_values must have shape \[batch, 3, 32, 32\]"):
            secure_model(pixel_values=torch.zeros(1, 3, 16, 16))
        with pytest.raises(puma.InputError, match="takes pixel_values, not input_ids"):
            secure_model(input_ids=torch.zeros(1, 4, dtype=torch.long))
        with pytest.raises(puma.InputError, match="must be a float tensor"):
            secure_model(pixel_values=torch.zeros(1, 3, 32, 32, dtype=torch.long))
        with pytest.raises(puma.InputError, match="interpolate_pos_encoding is not accepted"):
            secure_model(pixel_values=images(1), interpolate_pos_encoding=torch.tensor(True))
        assert sum(s.messages for s in cluster.stats()) == before
        # a driver that skips its own checks: the parties refuse the same
        from securetorch.runtime.verbs import Verb

        request = {"model": secure_model.key, "inputs": {}}
        with pytest.raises(puma.InputError, match=r"pixel_values must have shape \[batch, 3, 32, 32\]"):
            cluster.call(Verb.FORWARD, {**request, "pixel_values": puma.private(torch.zeros(1, 3, 16, 16))})
        with pytest.raises(ValueError, match="forward takes no argument 'onehot'"):
            onehot = puma.private(torch.zeros(1, 4, 8, dtype=torch.long), dtype=torch.int64)
            cluster.call(Verb.FORWARD, {**request, "pixel_values": puma.private(images(1)), "onehot": onehot})
    finally:
        secure_model.close()
