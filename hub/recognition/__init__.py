"""Mutual recognition: which of a patient's recent results can be reused for an order.

The catalogue (what may be reused, for how long, from whom) is data; the rules are pure
functions over candidate results; the service runs a check in three statements, records the
reminders shown and the doctors' decisions, and the statistics count them.
"""
