"""The package version, in a module with no imports so every CLI can read it without loading a task."""

__version__ = "0.1.0"
