"""PixArt compatibility: a training Dataset over feature shards and an exporter to PixArt's own layout."""
