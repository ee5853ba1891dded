"""Dense captioning with vision-language models (LLaVA and other chat-template VLMs)."""
