"""omniphi: a self-hostable multimodal (text, image, audio → text) assistant kit."""

__version__ = "0.1.0"

from omniphi.library_noise import silence_library_noise as _silence_library_noise

_silence_library_noise()
