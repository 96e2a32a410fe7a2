"""CTR models on unsharded TorchRec modules: the DIN-style ID model, SimTier, MAKE, variants.

Plain modules only: the training entry point builds them on the ``meta``
device and wraps them in ``DistributedModelParallel``.
"""
