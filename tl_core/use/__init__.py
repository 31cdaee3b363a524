"""Using a finished run: predict, explain, export (with the bundle's model card and its standalone
program in bundle/), compare against a from-scratch baseline, grow it with new classes, and advice."""
