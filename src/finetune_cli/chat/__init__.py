"""``ft chat``: talk to a model (or several side by side), streamed, as it was trained to talk.

    ft chat runs/doric                          # the run's adapter, template and system prompt
    ft chat --compare smollm2-135m runs/doric    # base and tuned, side by side
    echo "How do I boil an egg?" | ft chat runs/doric --json
"""
