"""The HACA client SDK: talks to the chain over CometBFT RPC and checks what it is told."""
