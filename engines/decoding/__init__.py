"""Decoding engines (one generator per method) and the rules they share: acceptance, sampling, trees."""
