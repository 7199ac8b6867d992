"""bce-audit: precision audit of sigmoid, logit and binary cross-entropy against mpmath."""

__version__ = "0.1.0"
