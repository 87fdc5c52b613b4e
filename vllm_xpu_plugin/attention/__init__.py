"""Attention backend of the plugin (``ipex_attn.IPEXAttentionBackend``)."""
