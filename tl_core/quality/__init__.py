"""Improving the data from a finished run: likely label errors, and which images to label next."""
