"""auth: account nonces and the fee schedule."""
