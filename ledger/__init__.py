"""The royalty ledger: catalog, allocation of money to rights holders, and the Parquet journal."""
