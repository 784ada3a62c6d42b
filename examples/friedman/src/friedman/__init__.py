"""Your own code, as lit_tune finds it: a net and a DataModule that know nothing of lit_tune."""
