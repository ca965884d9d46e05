"""The read-side commands' library code: ``tuner report`` (with its plots) and ``tuner sync``."""
