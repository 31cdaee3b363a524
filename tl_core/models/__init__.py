"""Models: the backbone catalogue and weight sources, layer groups and the freeze plan, multi-layer
heads, a model cut into a frozen prefix, and the device."""
