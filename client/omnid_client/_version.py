"""This release of the client (a leaf: the modules that send it need not import the package)."""

__version__ = "0.1.0"
