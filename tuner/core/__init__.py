"""The core: errors and exit codes, the vocabulary stored in the database and MLflow,
redaction, durations, file names and lazy attributes. Imports nothing of tuner above it."""
