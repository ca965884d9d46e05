"""Launching: ``tuner launch`` and ``tuner worker``, worker slots, the event stream, the
supervisor of worker processes (or Ray actors) and the progress display."""
