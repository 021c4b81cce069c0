"""inference: client escrow, payment allowances, receipt settlement (fee to the node,
settlement fee burned)."""
