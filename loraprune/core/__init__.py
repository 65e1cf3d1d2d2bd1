"""The core algorithm, free of I/O and Hydra: structure, importance, schedule, masks, plan, surgery."""
