"""The g knob, direction: what the step moves along, from the current and past gradients."""
