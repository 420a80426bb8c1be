"""Embedded default configuration (``zoonode.defaults``): ``default.toml``."""
