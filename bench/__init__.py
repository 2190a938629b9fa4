"""bench: comparative benchmarking of autoencoders, VAEs and GANs under one budget."""

__version__ = "0.1.0"
