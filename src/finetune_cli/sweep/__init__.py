"""``ft sweep``: train a grid of variants, evaluate them alike, rank them on one leaderboard."""
