"""Stages used before or after the knobs: clipping, weight decay, trust ratios."""
