"""Attestation verifiers, one module per format (nitro, tdx/sgx via dcap-qvl, snp, dev), all
returning the same `Claims` and all taking `now` (unix seconds) as an argument: no wall clock."""
