"""`streamguard demo`: labelled traffic and a live summary of what the workers decide."""
