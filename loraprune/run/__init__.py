"""The run layer: config schemas, resolve, the pipeline (the recipe), training, checkpoints, loggers."""
