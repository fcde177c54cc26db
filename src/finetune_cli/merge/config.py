"""``ft merge``'s options: :class:`MergeConfig` (the command itself is :mod:`finetune_cli.merge.run`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt, split_list
from ..errors import ConfigError

GGUF_TYPES = ("f16", "q8_0", "q4_k_m")


@dataclass
class MergeConfig:
    run: str | None = opt(None, "Run directory written by ft train: its adapter (or model), base model, held-out "
                                "rows and system prompt.", panel="Source")
    adapter: str | None = opt(None, "An adapter directory (adapter_config.json + adapter_model.safetensors), "
                                    "instead of --run.", panel="Source")
    base: str | None = opt(None, "Base model (directory, .gguf, alias tiny / smollm2-135m, or hub id); none = the "
                                 "run's or the adapter's.", panel="Source")
    out: str = opt(help="Output directory; must be new or empty unless --force.", short="-o", required=True)
    dtype: str = opt("bf16", "Dtype of the merged safetensors.", choices=("bf16", "fp16"))
    adapter_only: bool = opt(False, "Write a clean adapter folder (weights, config, tokenizer, template) for "
                                    "vllm serve --enable-lora, instead of merging.")
    verify: bool = opt(True, "Check the export's logits against base+adapter; exit 1 past the dtype's tolerance.")
    samples: int = opt(8, "Sample conversations for verification and GGUF drift.", ge=1, le=256)
    gguf: list[str] = opt([], "GGUF files to write (comma-separated or repeated): f16, q8_0, q4_k_m.",
                          panel="GGUF")
    max_kl: float = opt(0.1, "Drift threshold, nats/token: a GGUF whose mean KL divergence from the 16-bit model "
                             "on held-out text is above this is flagged 'do not ship it' and ft exits 1.",
                        gt=0, panel="GGUF")
    llama_cpp: bool = opt(True, "Load each GGUF in the real llama.cpp (llama-cpp-python, the llama extra) and compare "
                                "it with the 16-bit model; off, or not installed, the check is reported skipped.",
                          panel="GGUF")
    trust_remote_code: bool = opt(False, "Run the base model's own Python code (auto_map in its config.json), for "
                                         "a source you trust; without it ft refuses such a model (it never "
                                         "prompts).", panel="Source")
    device: str = opt("auto", "Where to merge and verify (auto = cuda when available).", choices=("auto", "cpu", "cuda"))
    force: bool = opt(False, "Replace an existing --out directory.")

    @property
    def gguf_types(self) -> list[str]:
        """--gguf split on commas, lower-cased, each once."""
        return split_list(self.gguf, lower=True)

    def validate(self) -> None:
        bad = [k for k in self.gguf_types if k not in GGUF_TYPES]
        if bad:
            raise ConfigError(f"option --gguf: unknown type {bad[0]!r}", hint=f"one of {', '.join(GGUF_TYPES)}")
        if self.adapter_only and self.gguf_types:
            raise ConfigError("--adapter-only and --gguf: a GGUF is written from the merged model",
                              hint="run ft merge twice, or drop --adapter-only")
