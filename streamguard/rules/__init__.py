"""Detection: rulesets (what to check), facts (what an event says by itself), lists and verdicts."""
