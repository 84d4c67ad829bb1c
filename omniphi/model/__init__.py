from omniphi.model.modeling import OmniForConditionalGeneration, PlaceholderMismatchError

__all__ = ["OmniForConditionalGeneration", "PlaceholderMismatchError"]
