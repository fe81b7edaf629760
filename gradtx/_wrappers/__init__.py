"""Wrappers: transformations around another transformation (masking, partitions, skipping
non-finite steps). Layer 3: they wrap any transformation, gradtx's or optax's."""
