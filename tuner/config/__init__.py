"""Configuration: the study file validated once into a frozen ``StudyFile``, and the
``search:`` section as a ``SearchSpace``."""
