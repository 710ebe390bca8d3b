"""Drafters: what proposes tokens for speculative and tree decoding, behind one interface and a registry."""
