"""The pipeline: its configuration file, the stages built from it, and ``recaption run``."""
