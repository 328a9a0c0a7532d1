"""The code a MONAI bundle exported by petite-fl carries in its `scripts/` folder.

Copied verbatim into the bundle; it imports numpy, scipy, torch and MONAI only, never
petite_fl, so that the bundle runs where petite-fl is not installed.
"""
