"""Shared layer core and INR fitting."""
__version__ = "0.1.0"
