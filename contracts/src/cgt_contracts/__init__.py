"""CGT Logistics event contracts: the single source of every message shape on the bus.

Envelope in `cgt_contracts.envelope`, events and payloads in `cgt_contracts.events`.
"""
