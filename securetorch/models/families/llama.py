"""LLaMA (LlamaModel, LlamaForCausalLM): rotary embeddings with public cos/sin (from public
position ids), grouped-query attention (repeat_kv is expand + reshape), gated SiLU MLP, and
RMSNorm swapped for ``F.rms_norm`` (its variance keeps 8 extra fractional bits, which the
small activations of a transformer's residual stream need)."""

import torch

from securetorch.models.families import register
from securetorch.models.families.base import FamilySpec


class SecureRMSNorm(torch.nn.Module):
    """LlamaRMSNorm computed by the secure RMSNorm protocol (``weight`` is installed later)."""

    def __init__(self, original: torch.nn.Module) -> None:
        super().__init__()
        self.weight = original.weight
        self.variance_epsilon = original.variance_epsilon

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = (hidden_states.shape[-1],)
        return torch.nn.functional.rms_norm(hidden_states, shape, self.weight, self.variance_epsilon)


LLAMA = register(
    FamilySpec(
        name="llama",
        classes=("LlamaModel", "LlamaForCausalLM"),
        embeddings="embed_tokens",
        blocks="layers",
        swaps={"LlamaRMSNorm": SecureRMSNorm},
        inputs=("attention_mask", "position_ids"),
        causal=True,
    )
)
