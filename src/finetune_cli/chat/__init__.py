"""``ft chat``: talk to a model (or several side by side), streamed, as it was trained to talk."""
