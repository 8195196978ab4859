"""Training system: config schema, optimizer, sharding, checkpoints, steps and loop."""
