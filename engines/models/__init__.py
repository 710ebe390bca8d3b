"""Models: the adapter engines talk to (adapter.LM), and where weights come from (presets, locate, convert, store)."""
