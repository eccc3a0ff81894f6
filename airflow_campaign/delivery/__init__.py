"""The delivery engine, shared by every channel: prepare (typology), render, send loop, ledger, report."""
