"""LLaMA (LlamaModel, LlamaForCausalLM): rotary embeddings with public cos/sin (from public
position ids), grouped-query attention (repeat_kv is expand + reshape), RMSNorm through
pow/mean/rsqrt, gated SiLU MLP."""

from securetorch.patches.base import FamilySpec

LLAMA = FamilySpec(
    name="llama",
    classes=("LlamaModel", "LlamaForCausalLM"),
    embeddings="embed_tokens",
    blocks="layers",
    causal=True,
)
