"""Precision and scale: state dtypes, rounding of low-precision params, ZeRO-1 sharded state,
the memory report."""
