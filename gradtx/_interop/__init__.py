"""Interoperation with the libraries around gradtx: flax and orbax checkpoints."""
