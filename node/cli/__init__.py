"""The ``radnode`` command line."""
