"""ganctl: train and sample GANs from the command line or from Python."""

__version__ = "0.1.0"
