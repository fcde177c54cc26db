"""``ft train``: a LoRA/DoRA/rsLoRA/QLoRA/full fine-tune recipe (see ``run.py``).

Modules: ``config`` (options), ``data`` (inputs → conversations), ``template`` (chat template,
pad/EOS, assistant-only labels), ``backend_hf`` (transformers + peft + trl), ``records`` (run
directory, ``ft runs``), ``distributed`` (several processes: torchrun, ``--gpus``, DDP/FSDP arguments),
``run`` (setup → train → save → cleanup). Only ``config`` is imported by
the CLI; everything heavy is imported inside functions.
"""
