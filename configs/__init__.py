"""Bundled experiment configs, found by name after install."""
