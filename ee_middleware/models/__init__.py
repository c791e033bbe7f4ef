"""The one chat-model layer: a chat-client protocol, an OpenAI-compatible client, a local generator.

Light at import (no torch, transformers or httpx until a client is used).
"""
