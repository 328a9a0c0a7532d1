"""Experiments built on petite_fl: the comparison, the cross-scanner table, benchmarks, simulations.

Part of the installed package, so `petite compare` and `petite simulate` work from a wheel;
the checkout's `simulation/` folder only holds entry points that call them.
"""
