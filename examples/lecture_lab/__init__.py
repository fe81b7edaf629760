"""The lecture lab: the narrow valley, the plateau that is not a critical point, the knob table.

Run it with ``python examples/lecture.py --out runs/lecture``; see docs/three_knobs.md.

- :mod:`.valley`: the narrow convex valley (gradient descent, the adaptive scales, the burst);
- :mod:`.plateau`: a small network on scikit-learn's digits whose loss stalls at a nonzero gradient;
- :mod:`.knobs_table`: which knobs (g, σ, η) each named gradtx optimizer turns;
- :mod:`.plots`: the figures (matplotlib, Agg backend).
"""
