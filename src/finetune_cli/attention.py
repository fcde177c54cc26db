"""Which SDPA kernels train and eval run attention with (shared by both: neither imports the other).

    with attention_kernels(device):     # on CUDA: flash / memory-efficient / math, never cuDNN
        model.generate(...)
"""

from __future__ import annotations

from contextlib import nullcontext


def attention_kernels(device):
    """On CUDA, keep SDPA off its cuDNN backend where sequence lengths change from call to call: cuDNN
    builds a new plan for every new key length, i.e. for every generated token while decoding (measured
    on an H100: ~38 ms per attention call at batch 64 on a tiny model, which made decoding plan-bound,
    not compute-bound), and for every batch of chats while training (train/backend_hf.training_kernels)."""
    if getattr(device, "type", str(device)) != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
