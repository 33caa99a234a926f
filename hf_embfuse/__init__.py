"""hf_embfuse: fuse the input embeddings of several pretrained models into one learnable table."""

__version__ = "0.1.0"
