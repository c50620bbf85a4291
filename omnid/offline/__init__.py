"""Code that runs in the ``omnid`` command's process, never in the daemon."""
