"""GPT-2 (GPT2Model, GPT2LMHeadModel): ``gelu_new`` becomes the secure tanh-form GeLU (one
protocol instead of pow/tanh arithmetic); Conv1D runs as addmm."""

import torch

from securetorch.models.families import register
from securetorch.models.families.base import FamilySpec


class TanhGelu(torch.nn.Module):
    """GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x, approximate="tanh")


GPT2 = register(
    FamilySpec(
        name="gpt2",
        classes=("GPT2Model", "GPT2LMHeadModel"),
        embeddings="wte",
        blocks="h",
        swaps={"NewGELUActivation": lambda module: TanhGelu()},
        causal=True,
        token_types="vocab_size",  # GPT-2 embeds token types with its word embedding table
    )
)
