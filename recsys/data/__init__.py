"""The public data format, its validator and the TorchRec batch reader."""
