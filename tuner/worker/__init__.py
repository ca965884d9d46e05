"""One worker: the trial loop and loading the user's objective."""
