"""gov: the governance authorities named in genesis, and the messages only they may send."""
