"""omniphi: a self-hostable multimodal (text, image, audio → text) assistant kit."""

__version__ = "0.1.0"
