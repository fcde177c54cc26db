"""ft: collect → transform → fine-tune → evaluate → export."""

__version__ = "0.1.0"
