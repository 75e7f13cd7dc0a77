"""The package version, from one source (`importlib.metadata`), importable without torch."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["VERSION"]

try:
    VERSION = version("ann2snn")
except PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "unknown"
