"""The evaluator: rules, the alert state machine, grouping, silences, inhibition (to come)."""
