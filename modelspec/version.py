"""The package's version, apart from the package's API (modelspec/__init__.py) so that the
modules that API imports can read it without importing the API back."""

__version__ = "0.1.0"
