"""``ft sweep``: train a grid of variants, evaluate them alike, rank them on one leaderboard.

    ft sweep --name doric --grid "method=lora,dora;lr=1e-4,2e-4" --model smollm2-135m --data doric.jsonl
    ft runs --sweep doric
"""
