"""The upgrade preflight's fixed entry point: every omnid daemon, older ones included,
checks a newly installed package by running ``import omnid.upgrade``."""

from .daemon.upgrade import import_everything, installed_version

__all__ = ["import_everything", "installed_version"]
