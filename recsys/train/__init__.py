"""CTR training entry points: sharding the plain models with DistributedModelParallel."""
