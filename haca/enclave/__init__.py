"""The enclave: the trust boundary that runs models, signs the receipts it produced, and attests its key."""
