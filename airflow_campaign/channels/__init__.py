"""Transports a delivery sends through: smtp, ses and outbox for email (sms and push come next)."""
