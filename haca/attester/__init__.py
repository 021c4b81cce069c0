"""The dev attester: a software enclave for `tee` mode on any machine, DEV-MODE, NOT FOR PRODUCTION.

`enclave.DevEnclave` holds the receipt key and makes dev evidence; `server` serves it on a Unix socket
to the node; `client` is what the node calls it with; `python -m haca.attester` runs it.
"""
