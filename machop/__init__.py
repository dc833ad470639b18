"""machop: Deep Compression (prune, quantize, retrain, Huffman-code) as torch.fx graph passes."""

__version__ = "0.1.0"
