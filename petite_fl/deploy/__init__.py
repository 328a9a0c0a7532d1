"""Deployment: certificates and keys, the coordinator (SuperLink + proxy) and site (SuperNode + its own
app runner) launchers, app approval. Above the federation core, which never imports it."""
