"""Flower edge of the federation core: the apps, the wire codec and records, the SecAgg+ workflow, DP
wrappers, and what the deployed ServerApp reads from its coordinator (run journal, admitted sites)."""
