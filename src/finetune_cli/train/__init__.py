"""``ft train``: a LoRA/DoRA/rsLoRA/QLoRA/full fine-tune recipe (see ``run.py``).

    ft train --model smollm2-135m --data doric.jsonl --name doric
    ft train --method dpo --from runs/doric --data pairs.jsonl --name doric-dpo

Modules: ``config`` (options), ``data`` (inputs → conversations), ``examples`` (tokenized, labelled rows),
``backend_hf`` (transformers + peft + trl), ``trainer`` (ft's Trainer subclass), ``backend_unsloth``,
``preference`` (DPO/ORPO), ``callbacks``, ``distributed`` (several processes: torchrun, ``--gpus``, DDP/FSDP arguments),
``run`` (setup → train → save → cleanup). Only ``config`` is imported by
the CLI; everything heavy is imported inside functions.
"""
