"""Training: the fine-tune loop, data parallelism, checkpoints, resume, failure records, memory."""
