"""Source-free adaptation (SUMMIT): uni-modal models in, a multimodal site's adapted models out."""
