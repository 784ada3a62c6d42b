"""A user's own code: a net, two LightningModules and a DataModule that know nothing of lit_tune."""
