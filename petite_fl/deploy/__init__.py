"""Deployment: certificates and keys, the coordinator (SuperLink) and site (SuperNode) launchers."""
