"""``ft merge``: merged 16-bit model (verified against the adapter), adapter-only export, checked GGUF files.

    merge.py       base + LoRA/DoRA/rsLoRA -> merged safetensors with tokenizer, template, generation config
    verify.py      merged logits against base+adapter on sample prompts, per-dtype tolerances
    gguf_write.py  a focused HF -> GGUF converter for the Llama family (Llama, Mistral, Qwen2, SmolLM)
    kquants.py     numpy Q4_K / Q6_K quantizers (gguf-py only dequantizes K-quants)
    gguf_check.py  each GGUF reloaded by a real reader, generation, drift against the 16-bit model, Modelfile
    command.py     the ``ft merge`` config and ``run``
"""
