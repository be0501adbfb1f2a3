"""Training Mini-Omni2: the paper's three stages (spec §13) on a JSONL manifest, and the synthetic set that runs them
on a CPU. See docs/training.md. Nothing here is imported by the inference path."""
