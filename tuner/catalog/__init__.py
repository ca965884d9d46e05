"""The catalog: hyperparameter domains, optimizers (with Yogi), schedules with warmup, the
exported configuration and its torch code. Imports only the core."""
