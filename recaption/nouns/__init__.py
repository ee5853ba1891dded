"""Noun statistics with spaCy: PixArt's Table 1 (valid nouns, distinct nouns, nouns per image)."""
