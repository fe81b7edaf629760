"""The named optimizers, one file per family, each one composition of the knobs; the builder
(:func:`gradtx.optimizer`), optax's ``scale_by_*`` names and hyperparameter inspection."""
