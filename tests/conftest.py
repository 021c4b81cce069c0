"""Shared fixtures. Integration tests start a real CometBFT devnet through `devnet_home`."""
