"""The σ knob, per-parameter scale, from past gradient magnitudes: Adagrad, RMSProp, Adam and
its variants, Adafactor's factored moments."""
