"""Synthetic Taobao-like world: generator of the public data format."""
