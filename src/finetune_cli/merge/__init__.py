"""``ft merge``: a merged 16-bit model verified against the adapter, an adapter-only export, checked GGUFs.

    ft merge --run runs/a --out merged/a                          # bf16 safetensors, verified
    ft merge --adapter runs/a/adapter --base tiny --out merged/a --dtype fp16
    ft merge --run runs/a --out adapters/a --adapter-only         # for vllm serve --enable-lora
    ft merge --run runs/a --out merged/a --gguf f16,q8_0,q4_k_m   # + GGUF files, Modelfile, drift check

Verification is on by default: logits of the export against base+adapter on sample conversations
(the run's held-out rows, else built-in chats), max and mean |Δ| printed; past the dtype's tolerance
ft exits 1 and writes nothing. Each GGUF is written offline by ft's own converter, loaded back by
transformers' gguf-py reader and by llama.cpp itself (llama-cpp-python, the `llama` extra; without it
ft says the llama.cpp check was skipped and why), made to generate, and compared with the 16-bit model
on held-out text (tokenization, KL, perplexity, greedy tokens, stopping); a file llama.cpp refuses or
tokenizes differently, or whose drift passes --max-kl, is flagged ("this q4_k_m differs badly: do not
ship it"), left out of the Modelfile, and ft exits 1.

Modules: ``config`` (options), ``run`` (the command), ``weights`` (base + LoRA/DoRA/rsLoRA -> merged safetensors
with tokenizer, template, generation config), ``verify`` (merged logits against base+adapter, per-dtype tolerances),
``gguf_write``/``gguf_vocab`` (ft's offline HF -> GGUF converter: Llama, Mistral, Qwen2/3, Gemma 3, Phi-3),
``kquants`` (numpy Q4_K / Q6_K quantizers), ``gguf_check`` (each GGUF reloaded by real readers, generation, drift),
``llama_cpp`` (the check in real llama.cpp), ``modelfile`` (Ollama).
"""
