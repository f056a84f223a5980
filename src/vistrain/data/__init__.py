"""Scanning, checking, splitting and preprocessing images."""
