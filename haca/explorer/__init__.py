"""The explorer: a local web page that shows the network at work and checks what it shows in the
browser (explorer/src), served with a read-only pass-through to CometBFT's RPC."""
