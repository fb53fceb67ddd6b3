"""The site: ClientApp, local data and models, local training, privacy ledger, audit log."""
